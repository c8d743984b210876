//! `generate` end to end, with real SQLite stores in temporary directories.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use afs_datagen::{
    generate, generate_with, BoxError, DatagenError, Format, GenerationResult, GeneratorConfig,
    HeuristicScorer, Hooks, NearDedupeConfig, Progress, QualityScorer, RedactionCounts, Shape,
    Stage,
};
use afs_store::{Feedback, FeedbackValue, ManualClock, NewUsage, UsageStore};
use afs_store_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::Value;

const GOOD: &str = "The answer: the 65816 is a sixteen-bit processor from Western Design Center, used in the Super \
                    Nintendo and the Apple IIGS, with an emulation mode for 6502 code and a 24-bit address bus.";

struct Env {
    dir: tempfile::TempDir,
    store: SqliteStore,
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("usage.db")), clock).unwrap();
    Env { dir, store }
}

/// A record to log: query, response, quality, feedback; logged a minute apart in order.
#[derive(Clone)]
struct Rec {
    query: String,
    response: String,
    quality: Option<f64>,
    feedback: Option<FeedbackValue>,
    model: &'static str,
}

fn rec(query: &str, response: &str, quality: Option<f64>, feedback: Option<FeedbackValue>) -> Rec {
    Rec {
        query: query.into(),
        response: response.into(),
        quality,
        feedback,
        model: "m1",
    }
}

fn good(query: &str, quality: f64) -> Rec {
    rec(
        query,
        &format!("{GOOD} ({query})"),
        Some(quality),
        Some(FeedbackValue::Positive),
    )
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, records: &[Rec]) -> Vec<String> {
        let n_before = self.store.stats(&Default::default()).unwrap().total as i64;
        let batch = records
            .iter()
            .enumerate()
            .map(|(i, r)| NewUsage {
                quality_score: r.quality,
                timestamp: Some(start() + Duration::minutes(n_before + i as i64)),
                feedback: r.feedback.map(|value| Feedback {
                    value,
                    text: None,
                    at: None,
                }),
                ..NewUsage::new(r.query.clone(), r.response.clone(), r.model)
            })
            .collect();
        self.store.log_batch(batch).unwrap()
    }

    fn run(&self, config: &GeneratorConfig, out: &str) -> (GenerationResult, Vec<Value>) {
        let output = self.path(out);
        let result = generate(&self.store, config, &output, &HeuristicScorer, None).unwrap();
        (result, read_lines(&output))
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn user_text(v: &Value) -> &str {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .unwrap()["content"]
        .as_str()
        .unwrap()
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every candidate is accounted for by exactly one stage.
fn assert_partition(r: &GenerationResult) {
    let used = if r.format == Format::Dpo {
        2 * (r.new_samples + r.capped)
    } else {
        r.new_samples + r.capped
    };
    assert_eq!(
        r.total_candidates,
        r.filtered_by_feedback
            + r.filtered_by_quality
            + r.duplicates_removed
            + r.near_duplicates_removed
            + r.existing_duplicates_removed
            + r.unpaired
            + used,
        "{r:#?}"
    );
    assert_eq!(r.final_count, r.new_samples + r.rehearsal_samples);
}

#[test]
fn every_stage_is_counted() {
    let env = env();
    env.log(&[
        good("q1", 0.9),
        rec("q2", GOOD, Some(0.9), None), // no feedback
        rec("q3", GOOD, Some(0.9), Some(FeedbackValue::Negative)), // thumbs down
        rec("q4", GOOD, Some(0.9), Some(FeedbackValue::Neutral)), // neutral
        good("q5", 0.5),                  // low quality
        rec("q6", GOOD, None, Some(FeedbackValue::Positive)), // unscored, scores high
        rec("q7", "ok", None, Some(FeedbackValue::Positive)), // unscored, scores low
        rec(
            "  Q1 ",
            &format!("{GOOD} (q1)").to_uppercase(),
            Some(0.95),
            Some(FeedbackValue::Positive),
        ), // dup of q1
        good("q8", 0.7),                  // exactly at the threshold
    ]);
    let (r, lines) = env.run(&GeneratorConfig::default(), "out.jsonl");
    assert_eq!(r.total_candidates, 9);
    assert_eq!(r.filtered_by_feedback, 3);
    assert_eq!(r.scored_records, 2);
    assert_eq!(r.filtered_by_quality, 2);
    assert_eq!(r.duplicates_removed, 1);
    assert_eq!(r.near_duplicates_removed, 0);
    assert_eq!((r.new_samples, r.final_count), (3, 3));
    assert_partition(&r);
    let users: Vec<&str> = lines.iter().map(user_text).collect();
    assert_eq!(users, ["q1", "q6", "q8"]);
    let stats = r.quality_stats.unwrap();
    assert_eq!((stats.min, stats.max), (0.7, 1.0));
    assert!((stats.mean - (0.9 + 1.0 + 0.7) / 3.0).abs() < 1e-12);
    let span = r.records.unwrap();
    assert_eq!(span.first_timestamp, "2026-01-01T00:00:00Z");
    assert_eq!(span.last_timestamp, "2026-01-01T00:08:00Z");
    assert!(span.first_id < span.last_id);
}

#[test]
fn counts_agree_whether_the_store_or_the_pipeline_filters() {
    let env = env();
    env.log(&[
        good("a", 0.9),
        good("b", 0.3),
        rec("c", GOOD, Some(0.95), None),
        rec("d", GOOD, Some(0.2), Some(FeedbackValue::Negative)),
        good("e", 0.69999),
        good("f", 0.7),
    ]);
    let counts = |r: &GenerationResult| {
        (
            r.total_candidates,
            r.filtered_by_feedback,
            r.scored_records,
            r.filtered_by_quality,
            r.new_samples,
        )
    };
    // Every record has a score: the store applies both conditions.
    let (r, lines) = env.run(&GeneratorConfig::default(), "a.jsonl");
    assert_eq!(counts(&r), (6, 2, 0, 2, 2));
    assert_eq!(lines.iter().map(user_text).collect::<Vec<_>>(), ["a", "f"]);
    // One unscored record: the pipeline reads and scores it, and filters quality itself.
    env.log(&[rec("g", "ok", None, Some(FeedbackValue::Positive))]);
    let (r, lines) = env.run(&GeneratorConfig::default(), "b.jsonl");
    assert_eq!(counts(&r), (7, 2, 1, 3, 2));
    assert_eq!(lines.iter().map(user_text).collect::<Vec<_>>(), ["a", "f"]);
    // Its score was written back: the store filters again.
    let (r, _) = env.run(&GeneratorConfig::default(), "c.jsonl");
    assert_eq!(counts(&r), (7, 2, 0, 3, 2));
    assert_partition(&r);
}

#[test]
fn feedback_filter_semantics() {
    let env = env();
    env.log(&[
        good("up", 0.9),
        rec("none", GOOD, Some(0.9), None),
        rec("neutral", GOOD, Some(0.9), Some(FeedbackValue::Neutral)),
        rec("down", GOOD, Some(0.9), Some(FeedbackValue::Negative)),
    ]);
    let check = |min: Option<i64>, expected: &[&str]| {
        let config = GeneratorConfig {
            min_user_feedback: min,
            ..GeneratorConfig::default()
        };
        let (_, lines) = env.run(&config, "f.jsonl");
        let users: Vec<&str> = lines.iter().map(user_text).collect();
        assert_eq!(users, expected, "min_user_feedback {min:?}");
    };
    check(Some(1), &["up"]);
    check(Some(0), &["up", "neutral"]);
    check(Some(-1), &["up", "neutral", "down"]);
    check(None, &["up", "none", "neutral", "down"]);
}

#[test]
fn every_format_writes_json_lines_with_its_keys() {
    let env = env();
    env.log(&[good("q1", 0.9), good("q2", 0.8)]);
    let expected: [(Format, &[&str]); 6] = [
        (Format::ChatMl, &["messages", "metadata"]),
        (Format::OpenAi, &["messages"]),
        (Format::Alpaca, &["input", "instruction", "output"]),
        (Format::Completion, &["completion", "prompt"]),
        (Format::Text, &["text"]),
        (Format::ShareGpt, &["conversations"]),
    ];
    for (format, keys_expected) in expected {
        let (r, lines) = env.run(
            &GeneratorConfig {
                format,
                ..GeneratorConfig::default()
            },
            "fmt.jsonl",
        );
        assert_eq!(r.final_count, 2, "{format}");
        for line in &lines {
            assert_eq!(
                keys(line),
                keys_expected.iter().copied().collect(),
                "{format}: {line}"
            );
        }
    }
    let (_, lines) = env.run(&GeneratorConfig::default(), "chat.jsonl");
    let meta = &lines[0]["metadata"];
    assert_eq!(meta["model"], "m1");
    assert_eq!(meta["quality_score"], 0.9);
    assert_eq!(meta["user_feedback"], 1);
    assert_eq!(meta["timestamp"], "2026-01-01T00:00:00.000000Z");
    assert!(meta["id"].as_str().unwrap().len() == 26);

    let config = GeneratorConfig {
        system_prompt: Some("You are terse.".into()),
        ..GeneratorConfig::default()
    };
    let (_, lines) = env.run(&config, "sys.jsonl");
    assert_eq!(
        lines[0]["messages"][0],
        serde_json::json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(lines[0]["messages"].as_array().unwrap().len(), 3);
}

#[test]
fn unicode_survives_every_format() {
    let env = env();
    let query = "emoji 😀, CJK 日本語, \"quotes\", back\\slash, tab\t, nul\u{0}, ls\u{2028}ps\u{2029}, nel\u{85}";
    env.log(&[rec(
        query,
        &format!("{GOOD} 答え 😀\u{2028}"),
        Some(0.9),
        Some(FeedbackValue::Positive),
    )]);
    for format in [
        Format::ChatMl,
        Format::Alpaca,
        Format::Completion,
        Format::ShareGpt,
        Format::Text,
    ] {
        let config = GeneratorConfig {
            format,
            redact: false,
            ..GeneratorConfig::default()
        };
        let out = env.path("u.jsonl");
        generate(&env.store, &config, &out, &HeuristicScorer, None).unwrap();
        let bytes = fs::read(&out).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 1, "{format}");
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{2029}') && !text.contains('\u{85}')
        );
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        let prompt = match format {
            Format::ChatMl => v["messages"][0]["content"].clone(),
            Format::Alpaca => v["instruction"].clone(),
            Format::Completion => {
                assert_eq!(v["prompt"], format!("{query}\n\n"));
                continue;
            }
            Format::ShareGpt => v["conversations"][0]["value"].clone(),
            _ => {
                assert!(v["text"].as_str().unwrap().starts_with(query));
                continue;
            }
        };
        assert_eq!(prompt, query, "{format}");
    }
}

#[test]
fn dpo_pairs_thumbs_up_with_thumbs_down_per_query() {
    let env = env();
    let up = Some(FeedbackValue::Positive);
    let down = Some(FeedbackValue::Negative);
    env.log(&[
        rec("What is Rust?", "bad answer one", Some(0.2), down),
        rec("what is  rust?", &format!("{GOOD} A"), Some(0.9), up), // same normalised query
        rec("What is Rust?", &format!("{GOOD} B"), Some(0.8), up),
        rec("What is Rust?", "bad answer two", Some(0.1), down),
        rec("What is Rust?", "bad answer three", Some(0.1), down), // left without a partner
        rec("Other?", &format!("{GOOD} C"), Some(0.9), up),        // no thumbs-down: unpaired
        rec("Third?", &format!("{GOOD} D"), Some(0.3), up),        // thumbs up below quality
        rec("Third?", "bad answer four", Some(0.1), down),         // unpaired then
        rec("Neutral?", GOOD, Some(0.9), Some(FeedbackValue::Neutral)),
        rec("None?", GOOD, Some(0.9), None),
    ]);
    let config = GeneratorConfig {
        format: Format::Dpo,
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "dpo.jsonl");
    assert_eq!(r.filtered_by_feedback, 2);
    assert_eq!(r.filtered_by_quality, 1);
    assert_eq!(r.unpaired, 3);
    assert_eq!(r.new_samples, 2);
    assert_partition(&r);
    for line in &lines {
        assert_eq!(
            keys(line),
            ["chosen", "prompt", "rejected"].into_iter().collect()
        );
    }
    // In log order, each thumbs-up meets the oldest waiting thumbs-down.
    assert_eq!(lines[0]["prompt"], "what is  rust?\n\n");
    assert_eq!(lines[0]["chosen"], format!("{GOOD} A"));
    assert_eq!(lines[0]["rejected"], "bad answer one");
    assert_eq!(lines[1]["prompt"], "What is Rust?\n\n");
    assert_eq!(lines[1]["chosen"], format!("{GOOD} B"));
    assert_eq!(lines[1]["rejected"], "bad answer two");
    // Both sides of each pair are in the record span.
    assert_eq!(r.records.unwrap().first_timestamp, "2026-01-01T00:00:00Z");

    // A system prompt does not change the shape: plain stays strings, and the
    // conversational shape is asked for on its own.
    let with_system = GeneratorConfig {
        system_prompt: Some("sys".into()),
        ..config.clone()
    };
    let (_, lines) = env.run(&with_system, "dpo-sys.jsonl");
    assert_eq!(lines[0]["prompt"], "sys\n\nwhat is  rust?\n\n");
    assert_eq!(lines[0]["chosen"], format!("{GOOD} A"));
    let conversational = GeneratorConfig {
        shape: Some(Shape::Conversational),
        ..config.clone()
    };
    let (_, lines) = env.run(&conversational, "dpo-conv.jsonl");
    assert_eq!(lines[0]["prompt"][0]["role"], "user");
    assert_eq!(lines[0]["chosen"][0]["role"], "assistant");
    let (_, lines) = env.run(
        &GeneratorConfig {
            system_prompt: Some("sys".into()),
            ..conversational
        },
        "dpo-conv-sys.jsonl",
    );
    assert_eq!(lines[0]["prompt"][0]["role"], "system");

    // OpenAI's preference format pairs the same records.
    let (r, lines) = env.run(
        &GeneratorConfig {
            format: Format::OpenAiDpo,
            ..config
        },
        "openai-dpo.jsonl",
    );
    assert_eq!((r.unpaired, r.new_samples), (3, 2));
    assert_eq!(
        lines[0]["input"]["messages"][0]["content"],
        "what is  rust?"
    );
    assert_eq!(
        lines[0]["preferred_output"][0]["content"],
        format!("{GOOD} A")
    );
    assert_eq!(
        lines[0]["non_preferred_output"][0]["content"],
        "bad answer one"
    );
}

#[test]
fn kto_labels_follow_feedback() {
    let env = env();
    env.log(&[
        good("a", 0.9),
        rec(
            "b",
            "terrible answer",
            Some(0.1),
            Some(FeedbackValue::Negative),
        ), // skips the quality filter
        rec("c", GOOD, Some(0.2), Some(FeedbackValue::Positive)), // fails it
        rec("d", GOOD, Some(0.9), Some(FeedbackValue::Neutral)),
        rec("e", GOOD, Some(0.9), None),
    ]);
    let config = GeneratorConfig {
        format: Format::Kto,
        min_user_feedback: Some(1),
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "kto.jsonl");
    assert_eq!(
        (r.filtered_by_feedback, r.filtered_by_quality, r.new_samples),
        (2, 1, 2)
    );
    assert_partition(&r);
    let labels: Vec<(&str, bool)> = lines
        .iter()
        .map(|l| (l["prompt"].as_str().unwrap(), l["label"].as_bool().unwrap()))
        .collect();
    assert_eq!(labels, [("a\n\n", true), ("b\n\n", false)]);
    for line in &lines {
        assert_eq!(
            keys(line),
            ["completion", "label", "prompt"].into_iter().collect()
        );
    }
}

fn write_existing(path: &Path, n: usize) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&serde_json::json!({"instruction": format!("old question {i}"), "input": "", "output": format!("old answer {i}")}).to_string());
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

fn existing_lines_used(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l["metadata"]["line"].as_u64())
        .collect()
}

#[test]
fn rehearsal_mixes_the_configured_share_reproducibly() {
    let env = env();
    env.log(
        &(0..40)
            .map(|i| good(&format!("new {i}"), 0.9))
            .collect::<Vec<_>>(),
    );
    let existing = env.path("old.jsonl");
    write_existing(&existing, 100);
    let config = GeneratorConfig {
        existing: Some(existing.clone()),
        rehearsal_ratio: 0.2,
        seed: 7,
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "mix.jsonl");
    // 40 new samples; round(40 × 0.2 / 0.8) = 10 existing: 10 of 50 lines = 20%.
    assert_eq!(
        (r.new_samples, r.rehearsal_samples, r.final_count),
        (40, 10, 50)
    );
    let used = existing_lines_used(&lines);
    assert_eq!(used.len(), 10);
    assert!(used.windows(2).all(|w| w[0] < w[1]) && used.iter().all(|&l| (1..=100).contains(&l)));
    // Spread evenly: no two rehearsal lines next to each other, none at the very start.
    let positions: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l["metadata"]["line"].is_u64())
        .map(|(i, _)| i)
        .collect();
    assert!(
        positions.windows(2).all(|w| w[1] - w[0] >= 4),
        "{positions:?}"
    );
    assert!(positions[0] >= 3);
    let ex = r.existing.as_ref().unwrap();
    assert_eq!(
        (ex.lines, ex.valid, ex.eligible, ex.malformed),
        (100, 100, 100, 0)
    );

    // Same config: byte-identical output and manifest.
    let first = (
        fs::read(env.path("mix.jsonl")).unwrap(),
        fs::read(env.path("mix.jsonl.manifest.json")).unwrap(),
    );
    env.run(&config, "mix.jsonl");
    let second = (
        fs::read(env.path("mix.jsonl")).unwrap(),
        fs::read(env.path("mix.jsonl.manifest.json")).unwrap(),
    );
    assert!(first == second, "two runs of the same config differ");

    // Another seed chooses other lines.
    let (_, other) = env.run(
        &GeneratorConfig {
            seed: 8,
            ..config.clone()
        },
        "mix8.jsonl",
    );
    assert_ne!(existing_lines_used(&other), used);

    // Few existing lines: all of them, no more.
    write_existing(&existing, 3);
    let (r, _) = env.run(&config, "few.jsonl");
    assert_eq!((r.rehearsal_samples, r.final_count), (3, 43));
}

#[test]
fn rehearsal_respects_the_cap() {
    let env = env();
    env.log(
        &(0..40)
            .map(|i| good(&format!("new {i}"), 0.5 + i as f64 / 100.0))
            .collect::<Vec<_>>(),
    );
    let existing = env.path("old.jsonl");
    write_existing(&existing, 100);
    let config = GeneratorConfig {
        min_quality_score: 0.0,
        existing: Some(existing),
        rehearsal_ratio: 0.25,
        max_samples: Some(20),
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "cap.jsonl");
    assert_eq!(
        (r.new_samples, r.rehearsal_samples, r.final_count, r.capped),
        (15, 5, 20, 25)
    );
    assert_partition(&r);
    // The 15 best new samples are new 25..=39, written in log order.
    let users: Vec<String> = lines
        .iter()
        .filter(|l| l["metadata"]["line"].is_null())
        .map(|l| user_text(l).to_string())
        .collect();
    assert_eq!(
        users,
        (25..40).map(|i| format!("new {i}")).collect::<Vec<_>>()
    );
}

#[test]
fn max_samples_keeps_the_highest_quality() {
    let env = env();
    env.log(&[
        good("a", 0.8),
        good("b", 0.95),
        good("c", 0.9),
        good("d", 0.95),
        good("e", 0.75),
        good("f", 0.9),
    ]);
    let config = GeneratorConfig {
        max_samples: Some(3),
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "top.jsonl");
    // 0.95, 0.95 and the earlier of the two 0.9s; written in log order.
    let users: Vec<&str> = lines.iter().map(user_text).collect();
    assert_eq!(users, ["b", "c", "d"]);
    assert_eq!((r.new_samples, r.capped), (3, 3));
    assert_partition(&r);
    assert_eq!(r.quality_stats.unwrap().min, 0.9);
}

#[test]
fn malformed_existing_lines_are_reported_with_line_numbers() {
    let env = env();
    env.log(&[good("a", 0.9)]);
    let existing = env.path("old.jsonl");
    fs::write(
        &existing,
        [
            r#"{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]}"#,
            "{not json",
            "",
            r#"{"prompt":"p","completion":"c"}"#,
            r#"{"unknown":"keys"}"#,
            "[1,2,3]",
            r#"{"prompt":"p","chosen":"c","rejected":"r"}"#,
            r#"{"text":"plain"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let config = GeneratorConfig {
        existing: Some(existing),
        ..GeneratorConfig::default()
    };
    let (r, _) = env.run(&config, "m.jsonl");
    let ex = r.existing.unwrap();
    assert_eq!(
        (ex.lines, ex.blank_lines, ex.valid, ex.malformed),
        (8, 1, 4, 3)
    );
    let numbers: Vec<u64> = ex.malformed_lines.iter().map(|m| m.line).collect();
    assert_eq!(numbers, [2, 5, 6]);
    assert!(
        ex.malformed_lines[0].reason.starts_with("invalid json"),
        "{:?}",
        ex.malformed_lines[0]
    );
    assert!(ex.malformed_lines[2].reason.contains("not a json object"));
    // chatml takes the pair, the prompt/completion line and the chosen side of the pair.
    assert_eq!((ex.eligible, ex.incompatible), (3, 1));
}

#[test]
fn new_samples_already_in_the_existing_file_are_dropped() {
    let env = env();
    env.log(&[
        good("kept", 0.9),
        rec(
            "In The File",
            "Same Answer",
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
        rec(
            "mail me",
            "at alice@example.com",
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
        rec(
            "as text",
            "whole line",
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
    ]);
    let existing = env.path("old.jsonl");
    fs::write(
        &existing,
        concat!(
            r#"{"prompt":"in the  file","completion":"same answer"}"#,
            "\n",
            r#"{"instruction":"mail me","input":"","output":"at <EMAIL>"}"#,
            "\n",
            r#"{"text":"as text\n\nwhole line"}"#,
            "\n"
        ),
    )
    .unwrap();
    let config = GeneratorConfig {
        existing: Some(existing.clone()),
        min_quality_score: 0.0,
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "d.jsonl");
    assert_eq!(r.existing_duplicates_removed, 3);
    assert_eq!(lines.iter().map(user_text).collect::<Vec<_>>(), ["kept"]);
    assert_partition(&r);

    // Without dedupe nothing is dropped.
    let (r, _) = env.run(
        &GeneratorConfig {
            deduplicate: false,
            ..config
        },
        "d2.jsonl",
    );
    assert_eq!((r.existing_duplicates_removed, r.new_samples), (0, 4));
}

#[test]
fn output_may_replace_the_existing_file() {
    let env = env();
    env.log(
        &(0..8)
            .map(|i| good(&format!("new {i}"), 0.9))
            .collect::<Vec<_>>(),
    );
    let path = env.path("train.jsonl");
    write_existing(&path, 20);
    let config = GeneratorConfig {
        existing: Some(path.clone()),
        rehearsal_ratio: 0.5,
        ..GeneratorConfig::default()
    };
    let result = generate(&env.store, &config, &path, &HeuristicScorer, None).unwrap();
    assert_eq!((result.new_samples, result.rehearsal_samples), (8, 8));
    assert_eq!(read_lines(&path).len(), 16);
}

#[test]
fn near_duplicates_are_removed_and_distinct_texts_kept() {
    let env = env();
    let long = |topic: &str, edit: &str| {
        let words: Vec<String> = (0..80).map(|i| format!("{topic}{i}")).collect();
        format!("{} {edit} {}", words[..40].join(" "), words[40..].join(" "))
    };
    env.log(&[
        rec(
            "Explain caching",
            &long("cache", "first"),
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
        rec(
            "Explain caching",
            &long("cache", "second"),
            Some(0.9),
            Some(FeedbackValue::Positive),
        ), // one word differs
        rec(
            "Explain queues",
            &long("queue", "first"),
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
        rec(
            "How do I reset my password on the site?",
            "Open settings, then security, then choose reset.",
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
        rec(
            "How do I reset my pasword on the site?",
            "Open settings, then security, then choose reset.",
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
        rec(
            "What is the capital of France?",
            "Paris is the capital of France.",
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
    ]);
    let base = GeneratorConfig {
        min_quality_score: 0.0,
        ..GeneratorConfig::default()
    };
    let (r, _) = env.run(&base, "no-near.jsonl");
    assert_eq!((r.near_duplicates_removed, r.new_samples), (0, 6));
    let config = GeneratorConfig {
        near_dedupe: Some(NearDedupeConfig::default()),
        ..base
    };
    let (r, lines) = env.run(&config, "near.jsonl");
    assert_eq!(r.near_duplicates_removed, 2);
    assert_partition(&r);
    let users: Vec<&str> = lines.iter().map(user_text).collect();
    assert_eq!(
        users,
        [
            "Explain caching",
            "Explain queues",
            "How do I reset my password on the site?",
            "What is the capital of France?"
        ]
    );
}

#[test]
fn redaction_counts_and_leaves_the_log_alone() {
    let env = env();
    let ids = env.log(&[rec(
        "my mail is bob@example.com and card 4111 1111 1111 1111",
        &format!("{GOOD} Call 555-123-4567 from 10.0.0.1 with key AKIAIOSFODNN7EXAMPLE"),
        Some(0.9),
        Some(FeedbackValue::Positive),
    )]);
    let (r, lines) = env.run(&GeneratorConfig::default(), "red.jsonl");
    assert_eq!(
        r.redactions,
        RedactionCounts {
            email: 1,
            phone: 1,
            credit_card: 1,
            ip_address: 1,
            secret: 1
        }
    );
    let text = lines[0].to_string();
    for leaked in ["bob@example.com", "4111", "555-123", "10.0.0.1", "AKIA"] {
        assert!(!text.contains(leaked), "{leaked} leaked: {text}");
    }
    assert_eq!(
        user_text(&lines[0]),
        "my mail is <EMAIL> and card <CREDIT_CARD>"
    );
    let stored = env.store.get(&ids[0]).unwrap();
    assert!(stored.query.contains("bob@example.com"));

    let (r, lines) = env.run(
        &GeneratorConfig {
            redact: false,
            ..GeneratorConfig::default()
        },
        "raw.jsonl",
    );
    assert_eq!(r.redactions.total(), 0);
    assert!(user_text(&lines[0]).contains("bob@example.com"));
}

#[test]
fn records_equal_after_redaction_are_duplicates() {
    let env = env();
    env.log(&[
        rec(
            "write to alice@example.com",
            GOOD,
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
        rec(
            "write to bob@example.org",
            GOOD,
            Some(0.9),
            Some(FeedbackValue::Positive),
        ),
    ]);
    let (r, _) = env.run(&GeneratorConfig::default(), "r.jsonl");
    assert_eq!((r.duplicates_removed, r.new_samples), (1, 1));
    assert_eq!(r.redactions.email, 1);
}

#[test]
fn scores_are_written_back_when_asked() {
    let env = env();
    let ids = env.log(&[
        rec("q", GOOD, None, Some(FeedbackValue::Positive)),
        rec("r", GOOD, None, None),
    ]);
    let config = GeneratorConfig {
        write_back_scores: false,
        ..GeneratorConfig::default()
    };
    let (r, _) = env.run(&config, "a.jsonl");
    assert_eq!(r.scored_records, 1);
    assert_eq!(env.store.get(&ids[0]).unwrap().quality_score, None);

    let (r, _) = env.run(&GeneratorConfig::default(), "b.jsonl");
    assert_eq!(r.scored_records, 1);
    let expected = HeuristicScorer::score_texts("q", GOOD);
    assert_eq!(
        env.store.get(&ids[0]).unwrap().quality_score,
        Some(expected)
    );
    // Only records that passed the feedback filter are scored.
    assert_eq!(env.store.get(&ids[1]).unwrap().quality_score, None);
    // The next run finds the score and scores nothing.
    let (r, _) = env.run(&GeneratorConfig::default(), "c.jsonl");
    assert_eq!(r.scored_records, 0);
}

#[test]
fn scores_of_a_large_log_are_all_written_back() {
    // More unscored records than one write-back batch holds, with scored and unscored
    // records and ones the feedback filter drops interleaved.
    let env = env();
    let records: Vec<Rec> = (0..2_600)
        .map(|i| {
            let query = format!("question {i} about caching");
            let response = format!("{GOOD} Answer number {i}, with {} details.", i % 17);
            match i % 4 {
                0 => rec(&query, &response, Some(0.9), Some(FeedbackValue::Positive)),
                1 => rec(&query, &response, None, None),
                _ => rec(&query, &response, None, Some(FeedbackValue::Positive)),
            }
        })
        .collect();
    let ids = env.log(&records);
    let (first, lines) = env.run(&GeneratorConfig::default(), "a.jsonl");
    assert_eq!(first.scored_records, 1_300);
    for (id, r) in ids.iter().zip(&records) {
        let stored = env.store.get(id).unwrap().quality_score;
        match (r.quality, r.feedback) {
            (Some(q), _) => assert_eq!(stored, Some(q)),
            (None, None) => assert_eq!(stored, None, "{id} did not pass the feedback filter"),
            (None, Some(_)) => assert_eq!(
                stored,
                Some(HeuristicScorer::score_texts(&r.query, &r.response)),
                "{id}"
            ),
        }
    }
    // The next run reads the scores written back: nothing to score, the same file.
    let (second, again) = env.run(&GeneratorConfig::default(), "b.jsonl");
    assert_eq!(second.scored_records, 0);
    assert_eq!(second.output_blake3, first.output_blake3);
    assert_eq!(again, lines);
}

struct FailingScorer;

impl QualityScorer for FailingScorer {
    fn score(&self, _: &str, _: &str) -> Result<f64, BoxError> {
        Err("model endpoint unreachable".into())
    }
}

struct OutOfRangeScorer;

impl QualityScorer for OutOfRangeScorer {
    fn score(&self, _: &str, _: &str) -> Result<f64, BoxError> {
        Ok(1.5)
    }
}

#[test]
fn failed_runs_leave_no_file_at_the_target() {
    let env = env();
    let ids = env.log(&[
        good("a", 0.9),
        rec("b", GOOD, None, Some(FeedbackValue::Positive)),
    ]);
    let out = env.path("out").join("train.jsonl");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let before = files_in(out.parent().unwrap());

    // The scorer fails on the second record, after the first was written to the temp file.
    let err = generate(
        &env.store,
        &GeneratorConfig::default(),
        &out,
        &FailingScorer,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, DatagenError::Scorer { id, .. } if *id == ids[1]),
        "{err}"
    );
    assert!(err.to_string().contains("model endpoint unreachable"));
    let err = generate(
        &env.store,
        &GeneratorConfig::default(),
        &out,
        &OutOfRangeScorer,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, DatagenError::InvalidScore { value, .. } if value == 1.5),
        "{err}"
    );

    // The existing file is missing.
    let config = GeneratorConfig {
        existing: Some(env.path("missing.jsonl")),
        ..GeneratorConfig::default()
    };
    let err = generate(&env.store, &config, &out, &HeuristicScorer, None).unwrap_err();
    assert!(err.to_string().contains("missing.jsonl"), "{err}");

    // Invalid config.
    let config = GeneratorConfig {
        min_quality_score: 2.0,
        ..GeneratorConfig::default()
    };
    let err = generate(&env.store, &config, &out, &HeuristicScorer, None).unwrap_err();
    assert!(matches!(
        err,
        DatagenError::InvalidConfig {
            field: "min_quality_score",
            ..
        }
    ));
    assert_eq!(files_in(out.parent().unwrap()), before);

    // The target is a directory: refused before anything is read or written.
    let dir_target = env.path("out").join("is-a-dir");
    fs::create_dir(&dir_target).unwrap();
    fs::write(dir_target.join("keep"), "x").unwrap();
    let err = generate(
        &env.store,
        &GeneratorConfig::default(),
        &dir_target,
        &HeuristicScorer,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DatagenError::Store(afs_store::StoreError::InvalidInput { field: "out", .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert_eq!(
        files_in(out.parent().unwrap()),
        ["is-a-dir".to_string()].into_iter().collect()
    );

    // The output's directory cannot be created (a file is in the way).
    let blocked = env
        .path("out")
        .join("is-a-dir")
        .join("keep")
        .join("train.jsonl");
    assert!(generate(
        &env.store,
        &GeneratorConfig::default(),
        &blocked,
        &HeuristicScorer,
        None
    )
    .is_err());

    // A previous output survives a failed run unchanged.
    let result = generate(
        &env.store,
        &GeneratorConfig::default(),
        &out,
        &HeuristicScorer,
        None,
    )
    .unwrap();
    let previous = fs::read(&out).unwrap();
    env.log(&[rec("c", GOOD, None, Some(FeedbackValue::Positive))]);
    assert!(generate(
        &env.store,
        &GeneratorConfig::default(),
        &out,
        &FailingScorer,
        None
    )
    .is_err());
    assert_eq!(fs::read(&out).unwrap(), previous);
    assert_eq!(
        files_in(out.parent().unwrap()),
        ["is-a-dir", "train.jsonl", "train.jsonl.manifest.json"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(result.final_count, 2);
}

#[test]
fn manifest_records_config_counts_and_hash() {
    let env = env();
    env.log(&[
        good("a", 0.9),
        rec(
            "b",
            "Arena allocators hand out memory from one block and free it all at once.",
            Some(0.8),
            Some(FeedbackValue::Positive),
        ),
        rec("c", GOOD, Some(0.9), None),
    ]);
    let config = GeneratorConfig {
        model: Some("m1".into()),
        near_dedupe: Some(NearDedupeConfig::default()),
        ..GeneratorConfig::default()
    };
    let (r, _) = env.run(&config, "train.jsonl");
    let output = fs::read(env.path("train.jsonl")).unwrap();
    assert_eq!(r.manifest_path, env.path("train.jsonl.manifest.json"));
    let manifest: Value = serde_json::from_slice(&fs::read(&r.manifest_path).unwrap()).unwrap();
    let hash = blake3::hash(&output).to_hex().to_string();
    assert_eq!(r.output_blake3, hash);
    assert_eq!(manifest["blake3"], hash);
    assert_eq!(manifest["bytes"], output.len() as u64);
    assert_eq!(manifest["lines"], 2);
    assert_eq!(manifest["output"], "train.jsonl");
    assert_eq!(manifest["afs_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["config"]["format"], "chatml");
    assert_eq!(manifest["config"]["min_user_feedback"], 1);
    assert_eq!(manifest["config"]["model"], "m1");
    assert_eq!(manifest["config"]["near_dedupe"]["bands"], 11);
    assert_eq!(manifest["config"]["near_dedupe"]["rows"], 11);
    assert_eq!(manifest["result"]["total_candidates"], 3);
    assert_eq!(manifest["result"]["filtered_by_feedback"], 1);
    assert_eq!(manifest["result"]["final_count"], 2);
    assert_eq!(manifest["result"]["output_path"], "train.jsonl");
    assert_eq!(
        manifest["result"]["records"]["first_timestamp"],
        "2026-01-01T00:00:00Z"
    );
    assert_eq!(
        manifest["result"]["records"]["last_timestamp"],
        "2026-01-01T00:01:00Z"
    );
}

#[test]
fn time_and_model_filters_narrow_the_candidates() {
    let env = env();
    let mut records: Vec<Rec> = (0..6).map(|i| good(&format!("q{i}"), 0.9)).collect();
    records[5].model = "m2";
    env.log(&records);
    let config = GeneratorConfig {
        since: Some(start() + Duration::minutes(1)),
        until: Some(start() + Duration::minutes(4)),
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "w.jsonl");
    assert_eq!(r.total_candidates, 3);
    assert_eq!(
        lines.iter().map(user_text).collect::<Vec<_>>(),
        ["q1", "q2", "q3"]
    );
    let (r, lines) = env.run(
        &GeneratorConfig {
            model: Some("m2".into()),
            ..GeneratorConfig::default()
        },
        "m.jsonl",
    );
    assert_eq!(r.total_candidates, 1);
    assert_eq!(user_text(&lines[0]), "q5");
}

#[test]
fn progress_reports_the_scan_and_its_total() {
    let env = env();
    env.log(
        &(0..10)
            .map(|i| good(&format!("q{i}"), 0.9))
            .collect::<Vec<_>>(),
    );
    let events: Mutex<Vec<Progress>> = Mutex::new(Vec::new());
    let progress = |p: Progress| events.lock().unwrap().push(p);
    let out = env.path("p.jsonl");
    let config = GeneratorConfig {
        max_samples: Some(5),
        ..GeneratorConfig::default()
    };
    generate(&env.store, &config, &out, &HeuristicScorer, Some(&progress)).unwrap();
    let events = events.into_inner().unwrap();
    let scan: Vec<&Progress> = events.iter().filter(|p| p.stage == Stage::Scan).collect();
    assert_eq!(scan.last().map(|p| (p.done, p.total)), Some((10, Some(10))));
    let write: Vec<&Progress> = events.iter().filter(|p| p.stage == Stage::Write).collect();
    assert_eq!(write.last().map(|p| (p.done, p.total)), Some((5, Some(5))));
}

#[test]
fn empty_log_gives_an_empty_file() {
    let env = env();
    let (r, lines) = env.run(&GeneratorConfig::default(), "empty.jsonl");
    assert_eq!((r.total_candidates, r.final_count), (0, 0));
    assert!(lines.is_empty() && r.quality_stats.is_none() && r.records.is_none());
    assert_eq!(r.output_blake3, blake3::hash(b"").to_hex().to_string());
}

/// A log big enough to be read in many slices on several threads: queries and responses
/// repeat (exactly, and up to case and spacing), some differ only by an e-mail address,
/// some records have no score, and feedback is mixed.
fn big_log(n: usize) -> Vec<Rec> {
    let mut state = 11u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    (0..n)
        .map(|_| {
            let q = next(60);
            let mut query = format!("How does part {q} of the engine work?");
            if next(4) == 0 {
                query = query.to_uppercase().replace(' ', "  ");
            }
            let mut response = format!("{GOOD} Part {}.", next(20));
            if next(8) == 0 {
                response.push_str(&format!(" Mail ops{}@example.com.", next(3)));
            }
            let quality = match next(10) {
                0 => None,
                k => Some(0.5 + k as f64 / 20.0),
            };
            let feedback = match next(10) {
                0..=4 => Some(FeedbackValue::Positive),
                5 | 6 => Some(FeedbackValue::Negative),
                7 => Some(FeedbackValue::Neutral),
                _ => None,
            };
            rec(&query, &response, quality, feedback)
        })
        .collect()
}

/// The normalised form the exact-dedupe keys are built from (for ASCII text).
fn normalised(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// What the pipeline does to one record before pairing or writing, computed the simple
/// way: `None` when a filter or exact dedupe drops it, else its redacted texts.
fn simple_stages(
    r: &Rec,
    preference: bool,
    seen: &mut std::collections::HashSet<(String, String)>,
    counts: &mut RedactionCounts,
) -> Option<(String, String)> {
    let redactor = afs_datagen::Redactor::new();
    let passes_feedback = if preference {
        matches!(
            r.feedback,
            Some(FeedbackValue::Positive | FeedbackValue::Negative)
        )
    } else {
        r.feedback == Some(FeedbackValue::Positive)
    };
    if !passes_feedback {
        return None;
    }
    let quality = r
        .quality
        .unwrap_or_else(|| HeuristicScorer::score_texts(&r.query, &r.response));
    let exempt = preference && r.feedback == Some(FeedbackValue::Negative);
    if !exempt && quality < 0.7 {
        return None;
    }
    let raw = (normalised(&r.query), normalised(&r.response));
    if !seen.insert(raw.clone()) {
        return None;
    }
    let mut mine = RedactionCounts::default();
    let query = redactor.redact(&r.query, &mut mine).into_owned();
    let response = redactor.redact(&r.response, &mut mine).into_owned();
    let redacted = (normalised(&query), normalised(&response));
    if redacted != raw && !seen.insert(redacted) {
        return None;
    }
    counts.add(&mine);
    Some((query, response))
}

#[test]
fn big_logs_give_what_record_by_record_processing_gives() {
    let env = env();
    let records = big_log(6000);
    let ids = env.log(&records);

    let mut seen = Default::default();
    let mut counts = RedactionCounts::default();
    let expected: Vec<(&str, String, String)> = records
        .iter()
        .zip(&ids)
        .filter_map(|(r, id)| {
            let (q, resp) = simple_stages(r, false, &mut seen, &mut counts)?;
            Some((id.as_str(), q, resp))
        })
        .collect();
    assert!(expected.len() > 300, "{}", expected.len());
    let (r, lines) = env.run(&GeneratorConfig::default(), "big.jsonl");
    assert_partition(&r);
    assert!(
        r.duplicates_removed > 100 && r.scored_records > 100,
        "{r:#?}"
    );
    assert_eq!(r.redactions, counts);
    let got: Vec<(&str, String, String)> = lines
        .iter()
        .map(|line| {
            let messages = line["messages"].as_array().unwrap();
            (
                line["metadata"]["id"].as_str().unwrap(),
                messages[0]["content"].as_str().unwrap().to_string(),
                messages[1]["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn rows_without_a_stored_pair_key_dedupe_the_same() {
    // The store writes each record's pair key; rows written before it did (or by the Python
    // module) have none, and keys of the wrong length count as none: such rows are hashed
    // during generation. Mixed, the output must not change.
    let env = env();
    let records = big_log(3000);
    env.log(&records);
    let (all_keyed, keyed_lines) = env.run(&GeneratorConfig::default(), "keyed.jsonl");
    assert!(all_keyed.duplicates_removed > 50, "{all_keyed:#?}");
    let conn = rusqlite::Connection::open(env.path("usage.db")).unwrap();
    let cleared = conn
        // Records are a minute apart: clear the key of one minute in three, and cut it to
        // 16 bytes (as an early build wrote them, which read as no key) in another.
        .execute(
            "UPDATE usage SET pair_key = CASE WHEN (ts_us / 60000000) % 3 = 1 THEN NULL \
             ELSE substr(pair_key, 1, 16) END WHERE (ts_us / 60000000) % 3 <> 0",
            [],
        )
        .unwrap();
    assert!(cleared > 1500, "{cleared}");
    let (mixed, mixed_lines) = env.run(&GeneratorConfig::default(), "mixed.jsonl");
    assert_eq!(mixed.duplicates_removed, all_keyed.duplicates_removed);
    assert_eq!(mixed.final_count, all_keyed.final_count);
    assert_eq!(mixed_lines, keyed_lines);
    assert_eq!(
        fs::read(env.path("mixed.jsonl")).unwrap(),
        fs::read(env.path("keyed.jsonl")).unwrap()
    );
}

#[test]
fn big_logs_pair_like_record_by_record_processing() {
    let env = env();
    let records = big_log(6000);
    env.log(&records);

    // First pass: the queries that have both a thumbs-up and a thumbs-down.
    let polarity = |want| -> BTreeSet<String> {
        records
            .iter()
            .filter(|r| r.feedback == Some(want))
            .map(|r| normalised(&r.query))
            .collect()
    };
    let pairable: BTreeSet<String> = polarity(FeedbackValue::Positive)
        .intersection(&polarity(FeedbackValue::Negative))
        .cloned()
        .collect();
    // Second pass: the oldest waiting record of the other polarity is the partner.
    let mut seen = Default::default();
    let mut counts = RedactionCounts::default();
    let mut waiting: std::collections::HashMap<String, (bool, Vec<(String, String)>)> =
        Default::default();
    let mut expected = Vec::new();
    for r in &records {
        let Some((query, response)) = simple_stages(r, true, &mut seen, &mut counts) else {
            continue;
        };
        let key = normalised(&r.query);
        if !pairable.contains(&key) {
            continue;
        }
        let positive = r.feedback == Some(FeedbackValue::Positive);
        let (side, queue) = waiting.entry(key).or_default();
        if queue.is_empty() || *side == positive {
            *side = positive;
            queue.push((query, response));
            continue;
        }
        let (partner_query, partner_response) = queue.remove(0);
        expected.push(if positive {
            (query, response, partner_response)
        } else {
            (partner_query, partner_response, response)
        });
    }
    assert!(expected.len() > 100, "{}", expected.len());
    let config = GeneratorConfig {
        format: Format::Dpo,
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "big-dpo.jsonl");
    assert_partition(&r);
    let got: Vec<(String, String, String)> = lines
        .iter()
        .map(|line| {
            let text = |k: &str| line[k].as_str().unwrap().to_string();
            let prompt = text("prompt");
            let query = prompt.strip_suffix("\n\n").unwrap_or(&prompt).to_string();
            (query, text("chosen"), text("rejected"))
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_stopped_run_removes_its_files_and_leaves_the_old_output() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let env = env();
    env.log(
        &(0..50)
            .map(|i| good(&format!("q{i}"), 0.9))
            .collect::<Vec<_>>(),
    );
    let existing = env.path("existing.jsonl");
    write_existing(&existing, 20);
    let output = env.path("train.jsonl");
    fs::write(&output, "the previous output\n").unwrap();
    let before = files_in(env.dir.path());
    // A run that reads an existing file, scans, spools its new samples and writes them
    // again with the rehearsal samples: the stop comes in each stage in turn; then with
    // `dpo`, in its first pass.
    let rehearsal = GeneratorConfig {
        existing: Some(existing),
        rehearsal_ratio: 0.3,
        ..GeneratorConfig::default()
    };
    let dpo = GeneratorConfig {
        format: Format::Dpo,
        ..GeneratorConfig::default()
    };
    for (config, stage) in [
        (&rehearsal, Stage::ReadExisting),
        (&rehearsal, Stage::Scan),
        (&rehearsal, Stage::Write),
        (&dpo, Stage::GroupQueries),
    ] {
        let stop = AtomicBool::new(false);
        let seen = Mutex::new(Vec::new());
        let progress = |p: Progress| {
            seen.lock().unwrap().push(p.stage);
            if p.stage == stage {
                stop.store(true, Ordering::Relaxed);
            }
        };
        let hooks = Hooks {
            progress: Some(&progress),
            stop: Some(&stop),
            ..Hooks::default()
        };
        let err = generate_with(&env.store, config, &output, &HeuristicScorer, hooks).unwrap_err();
        assert!(matches!(err, DatagenError::Interrupted), "{stage:?}: {err}");
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.last(),
            Some(&stage),
            "it stopped at the first report of {stage:?}"
        );
        assert_eq!(files_in(env.dir.path()), before, "{stage:?}");
        assert_eq!(
            fs::read_to_string(&output).unwrap(),
            "the previous output\n"
        );
    }

    // A flag set before the start stops the run before it reads anything.
    let stop = AtomicBool::new(true);
    let hooks = Hooks {
        progress: None,
        stop: Some(&stop),
        ..Hooks::default()
    };
    let err = generate_with(&env.store, &rehearsal, &output, &HeuristicScorer, hooks).unwrap_err();
    assert!(matches!(err, DatagenError::Interrupted), "{err}");
    assert_eq!(files_in(env.dir.path()), before);

    // Unset, the same run completes.
    let stop = AtomicBool::new(false);
    let hooks = Hooks {
        progress: None,
        stop: Some(&stop),
        ..Hooks::default()
    };
    let result = generate_with(&env.store, &rehearsal, &output, &HeuristicScorer, hooks).unwrap();
    assert!(result.rehearsal_samples > 0, "{result:?}");
    assert_eq!(read_lines(&output).len() as u64, result.final_count);
}

#[test]
fn rehearsal_samples_take_the_shape_of_the_output() {
    let env = env();
    env.log(&[good("new question", 0.9)]);
    let existing = env.path("old.jsonl");
    let old = [
        r#"{"prompt":[{"role":"system","content":"old system"},{"role":"user","content":"old q1"}],"completion":[{"role":"assistant","content":"old a1"}]}"#,
        r#"{"prompt":"old q2\n\n","completion":"old a2"}"#,
        r#"{"messages":[{"role":"user","content":"old q3"},{"role":"assistant","content":"old a3"}]}"#,
    ];
    fs::write(&existing, old.join("\n")).unwrap();
    for shape in Shape::ALL {
        let config = GeneratorConfig {
            format: Format::Completion,
            shape: Some(shape),
            existing: Some(existing.clone()),
            rehearsal_ratio: 0.75,
            ..GeneratorConfig::default()
        };
        let (r, lines) = env.run(&config, "mixed.jsonl");
        assert_eq!((r.new_samples, r.rehearsal_samples), (1, 3), "{shape}");
        for line in &lines {
            let plain = line["prompt"].is_string() && line["completion"].is_string();
            let listed = line["prompt"].is_array() && line["completion"].is_array();
            assert!(
                if shape == Shape::Plain { plain } else { listed },
                "{shape}: {line}"
            );
        }
        let first = lines
            .iter()
            .find(|l| l["completion"].to_string().contains("old a1"))
            .expect("the first existing line is rehearsed");
        let expected = match shape {
            Shape::Plain => serde_json::json!("old system\n\nold q1\n\n"),
            Shape::Conversational => serde_json::json!([
                {"role": "system", "content": "old system"},
                {"role": "user", "content": "old q1"}
            ]),
        };
        assert_eq!(first["prompt"], expected, "{shape}");
    }
}

/// A conversation: an optional system turn, then user/assistant exchanges whose first
/// user turn is `opening` and whose last exchange is `last` (query, answer).
fn conversation(
    system: Option<&str>,
    opening: &str,
    last: (&str, &str),
) -> Vec<afs_store::Message> {
    use afs_store::{Message, Role};
    let mut turns: Vec<Message> = system
        .map(|s| Message::new(Role::System, s))
        .into_iter()
        .collect();
    turns.extend([
        Message::new(Role::User, opening),
        Message::new(Role::Assistant, "Sure, ask away."),
        Message::new(Role::User, last.0),
        Message::new(Role::Assistant, last.1),
    ]);
    turns
}

impl Env {
    /// Logs conversations (with quality and feedback), a minute apart after what is there.
    fn log_conversations(&self, records: &[(Vec<afs_store::Message>, f64, Option<FeedbackValue>)]) {
        let n_before = self.store.stats(&Default::default()).unwrap().total as i64;
        let batch = records
            .iter()
            .enumerate()
            .map(|(i, (turns, quality, feedback))| NewUsage {
                quality_score: Some(*quality),
                timestamp: Some(start() + Duration::minutes(n_before + i as i64)),
                feedback: feedback.map(|value| Feedback {
                    value,
                    text: None,
                    at: None,
                }),
                ..NewUsage::conversation(turns.clone(), "m1")
            })
            .collect();
        self.store.log_batch(batch).unwrap();
    }
}

/// A new store holding `conversations`, each with a thumbs-up and quality 0.9.
fn env_with_conversations(conversations: &[Vec<afs_store::Message>]) -> Env {
    let env = env();
    let records: Vec<_> = conversations
        .iter()
        .map(|c| (c.clone(), 0.9, Some(FeedbackValue::Positive)))
        .collect();
    env.log_conversations(&records);
    env
}

/// A new store holding the same exchange twice with slightly different queries.
fn singles_env(answer: &str) -> Env {
    let env = env();
    let up = Some(FeedbackValue::Positive);
    env.log(&[
        rec("And the 65816?", answer, Some(0.9), up),
        rec("And the 65816 ?", answer, Some(0.9), up),
    ]);
    env
}

#[test]
fn conversations_are_written_whole_and_deduped_whole() {
    let env = env();
    let up = Some(FeedbackValue::Positive);
    let answer = format!("{GOOD} (second)");
    env.log_conversations(&[
        (
            conversation(None, "Hello there", ("And the 65816?", &answer)),
            0.9,
            up,
        ),
        // The same conversation again: an exact duplicate.
        (
            conversation(None, "Hello there", ("And the 65816?", &answer)),
            0.9,
            up,
        ),
        // The same last exchange after another opening: not a duplicate.
        (
            conversation(None, "Good morning", ("And the 65816?", &answer)),
            0.9,
            up,
        ),
        // With a system turn of its own, which wins over --system-prompt.
        (
            conversation(Some("Be brief."), "Hi", ("And the 65816?", &answer)),
            0.9,
            up,
        ),
    ]);
    // A single-turn record of the same last exchange is no duplicate of the conversations.
    env.log(&[rec("And the 65816?", &answer, Some(0.9), up)]);
    let config = GeneratorConfig {
        format: Format::ChatMl,
        system_prompt: Some("You are afs.".into()),
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "chat.jsonl");
    assert_eq!((r.new_samples, r.duplicates_removed), (4, 1), "{r:?}");
    let roles = |line: &Value| -> Vec<String> {
        line["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap().to_string())
            .collect()
    };
    let long = ["system", "user", "assistant", "user", "assistant"];
    assert_eq!(roles(&lines[0]), long);
    assert_eq!(lines[0]["messages"][0]["content"], "You are afs.");
    assert_eq!(lines[0]["messages"][1]["content"], "Hello there");
    assert_eq!(lines[1]["messages"][1]["content"], "Good morning");
    assert_eq!(lines[2]["messages"][0]["content"], "Be brief.");
    assert_eq!(roles(&lines[2]), long);
    assert_eq!(lines[2]["messages"][4]["content"], answer.as_str());
    assert_eq!(roles(&lines[3]), ["system", "user", "assistant"]);

    // Near-dedupe compares the whole conversation: two that end alike but opened with
    // long, different turns are both kept, while their last exchanges alone are near
    // duplicates.
    let near = GeneratorConfig {
        near_dedupe: Some(NearDedupeConfig::default()),
        ..GeneratorConfig::default()
    };
    let conversations = env_with_conversations(&[
        conversation(
            None,
            "Tell me everything you know about the history of sixteen-bit home computers sold \
             in Europe during the eighties, their prices, their games and why they vanished.",
            ("And the 65816?", &answer),
        ),
        conversation(
            None,
            "My grandmother collected vintage consoles and left me a box full of cartridges; \
             which of them could be worth real money today, and where should I sell them?",
            ("And the 65816?", &answer),
        ),
    ]);
    let (r, _) = conversations.run(&near, "near.jsonl");
    assert_eq!((r.new_samples, r.near_duplicates_removed), (2, 0), "{r:?}");
    let singles = singles_env(&answer);
    let (r, _) = singles.run(&near, "near.jsonl");
    assert_eq!((r.new_samples, r.near_duplicates_removed), (1, 1), "{r:?}");

    // A file written from these conversations holds them all: merging into it adds only a
    // conversation logged after it (each format keys them as the store does), and
    // rehearsal keeps every turn of the old ones.
    let later = conversation(None, "A new opening", ("And the 65816?", &answer));
    env.log_conversations(&[(later, 0.9, up)]);
    for (format, system) in [
        (Format::ChatMl, Some("You are afs.")),
        (Format::ShareGpt, None),
    ] {
        let written = GeneratorConfig {
            format,
            system_prompt: system.map(String::from),
            until: Some(start() + Duration::minutes(5)),
            ..GeneratorConfig::default()
        };
        let name = format!("{}.jsonl", format.as_str());
        env.run(&written, &name);
        let merge = GeneratorConfig {
            existing: Some(env.path(&name)),
            rehearsal_ratio: 0.8,
            until: None,
            ..written.clone()
        };
        let (r, lines) = env.run(&merge, "merged.jsonl");
        assert_eq!(
            (
                r.new_samples,
                r.existing_duplicates_removed,
                r.rehearsal_samples
            ),
            (1, 4, 4),
            "{format}: {r:?}"
        );
        let turns = |l: &Value| {
            l.get("messages")
                .or(l.get("conversations"))
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m.get("role").or(m.get("from")).unwrap() == "user")
                .count()
        };
        assert_eq!(
            lines.iter().filter(|l| turns(l) == 2).count(),
            4,
            "{format}: {lines:?}"
        );
    }

    // sharegpt keeps every turn too.
    let (_, lines) = env.run(
        &GeneratorConfig {
            format: Format::ShareGpt,
            ..GeneratorConfig::default()
        },
        "sharegpt.jsonl",
    );
    assert_eq!(lines[0]["conversations"].as_array().unwrap().len(), 4);
    assert_eq!(lines[0]["conversations"][0]["value"], "Hello there");
}

#[test]
fn dpo_and_kto_prompt_with_the_conversation_and_pair_within_it() {
    let env = env();
    let up = Some(FeedbackValue::Positive);
    let down = Some(FeedbackValue::Negative);
    let good_answer = format!("{GOOD} (good)");
    env.log_conversations(&[
        (
            conversation(None, "Hello", ("And the 65816?", &good_answer)),
            0.9,
            up,
        ),
        // Same prompt conversation, thumbs down: pairs with the first.
        (
            conversation(None, "Hello", ("And the 65816?", "no idea")),
            0.1,
            down,
        ),
        // Same last question after another opening: another prompt, left unpaired.
        (
            conversation(None, "Howdy", ("And the 65816?", "dunno")),
            0.1,
            down,
        ),
    ]);
    let config = GeneratorConfig {
        format: Format::Dpo,
        shape: Some(Shape::Conversational),
        ..GeneratorConfig::default()
    };
    let (r, lines) = env.run(&config, "dpo.jsonl");
    assert_eq!((r.new_samples, r.unpaired), (1, 1), "{r:?}");
    let prompt = lines[0]["prompt"].as_array().unwrap();
    assert_eq!(prompt.len(), 3);
    assert_eq!(prompt[0]["content"], "Hello");
    assert_eq!(prompt[2]["role"], "user");
    assert_eq!(lines[0]["chosen"][0]["content"], good_answer.as_str());
    assert_eq!(lines[0]["rejected"][0]["content"], "no idea");

    // Plain: the conversation flattened with role names, the answer after it.
    let (_, lines) = env.run(
        &GeneratorConfig {
            format: Format::Kto,
            ..GeneratorConfig::default()
        },
        "kto.jsonl",
    );
    assert_eq!(
        lines[0]["prompt"],
        "user: Hello\n\nassistant: Sure, ask away.\n\nuser: And the 65816?\n\n"
    );
    assert_eq!(lines[0]["completion"], good_answer.as_str());
}
