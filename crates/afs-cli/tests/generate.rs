//! `afs generate` end to end: the real binary on a real database built with `afs import`.

mod common;

use common::{good_records, line, redact_ids, Env};
use serde_json::{json, Value};

/// A log with something for every format: thumbs-up records, a query with both a thumbs-up
/// and a thumbs-down response (for `dpo`), a thumbs-down record, and Unicode text.
fn fixture() -> Env {
    let env = Env::new();
    let mut lines = good_records(3, "plain");
    lines.push(line(
        "naïve café — 日本語 \"quoted\" \\ tab\t and a line separator \u{2028} end",
        "m1",
        json!({"quality_score": 0.95, "feedback": 1, "timestamp": "2025-06-01T11:00:00Z"}),
    ));
    lines.push(json!({
        "query": "How wide is the accumulator of the 65816?",
        "response": "It is 16 bits wide in native mode, 8 bits in emulation mode.",
        "model": "m1", "quality_score": 0.9, "feedback": 1, "timestamp": "2025-06-01T11:01:00Z",
    }));
    lines.push(json!({
        "query": "How wide is the accumulator of the 65816?",
        "response": "It is always 8 bits.",
        "model": "m1", "quality_score": 0.3, "feedback": -1, "timestamp": "2025-06-01T11:02:00Z",
    }));
    lines.push(line(
        "a question that got a thumbs down",
        "m2",
        json!({"quality_score": 0.2, "feedback": -1, "timestamp": "2025-06-01T11:03:00Z"}),
    ));
    env.import(&lines);
    env
}

/// Reads a JSON Lines file; every line must parse.
fn read_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

#[test]
fn every_format_writes_lines_that_parse() {
    let env = fixture();
    let check = |format: &str, keys: &[&str], expected_count: u64| {
        let out = env.path(&format!("{format}.jsonl"));
        let run = env.check(
            &[
                "generate",
                "--json",
                "--out",
                out.to_str().unwrap(),
                "--format",
                format,
            ],
            0,
        );
        let result = run.json();
        assert_eq!(result["format"], format, "{run:#?}");
        assert_eq!(result["final_count"], expected_count, "{format}: {run:#?}");
        let lines = read_lines(&out);
        assert_eq!(lines.len() as u64, expected_count, "{format}");
        for l in &lines {
            for key in keys {
                assert!(l.get(key).is_some(), "{format}: {l} lacks {key:?}");
            }
        }
        assert!(env.path(&format!("{format}.jsonl.manifest.json")).exists());
        lines
    };
    // Five thumbs-up records pass the default filters (feedback 1, quality >= 0.7).
    let chatml = check("chatml", &["messages"], 5);
    let unicode = chatml
        .iter()
        .find(|l| l.to_string().contains("naïve"))
        .expect("the Unicode record is in the output");
    assert_eq!(
        unicode["messages"][0]["content"],
        "naïve café — 日本語 \"quoted\" \\ tab\t and a line separator \u{2028} end"
    );
    let openai = check("openai", &["messages"], 5);
    assert!(openai.iter().all(|l| l.as_object().unwrap().len() == 1));
    check("alpaca", &["instruction", "input", "output"], 5);
    check("completion", &["prompt", "completion"], 5);
    check("text", &["text"], 5);
    check("sharegpt", &["conversations"], 5);
    let pairs = check(
        "openai-dpo",
        &["input", "preferred_output", "non_preferred_output"],
        1,
    );
    assert_eq!(
        pairs[0]["non_preferred_output"][0]["content"],
        "It is always 8 bits."
    );
    // dpo: the one query with a thumbs-up and a thumbs-down response.
    let dpo = check("dpo", &["prompt", "chosen", "rejected"], 1);
    assert_eq!(dpo[0]["rejected"], "It is always 8 bits.");
    // kto: every record with feedback 1 or -1 (thumbs-down ones need no minimum quality).
    let kto = check("kto", &["prompt", "completion", "label"], 7);
    assert_eq!(kto.iter().filter(|l| l["label"] == false).count(), 2);

    // Format names ignore case; an unknown one is a usage error.
    let out = env.path("x.jsonl");
    env.check(
        &[
            "generate",
            "--out",
            out.to_str().unwrap(),
            "--format",
            "ChatML",
        ],
        0,
    );
    env.check_err(
        &[
            "generate",
            "--out",
            out.to_str().unwrap(),
            "--format",
            "jsonl",
        ],
        2,
        &["jsonl", "chatml"],
    );
}

#[test]
fn personal_data_is_redacted_unless_no_redact() {
    let env = Env::new();
    env.import(&[line(
        "please write to jane.doe@example.com about my order",
        "m1",
        json!({"quality_score": 0.9, "feedback": 1}),
    )]);
    let out = env.path("redacted.jsonl");
    let result = env
        .check(&["generate", "--json", "--out", out.to_str().unwrap()], 0)
        .json();
    assert_eq!(
        result["redactions"]["email"], 2,
        "query and response: {result}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("<EMAIL>") && !text.contains("jane.doe@example.com"),
        "{text}"
    );

    let out = env.path("raw.jsonl");
    let result = env
        .check(
            &[
                "generate",
                "--json",
                "--no-redact",
                "--out",
                out.to_str().unwrap(),
            ],
            0,
        )
        .json();
    assert_eq!(result["redactions"]["email"], 0);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("jane.doe@example.com") && !text.contains("<EMAIL>"),
        "{text}"
    );

    // The human summary lists redactions per kind.
    let out = env.path("again.jsonl");
    let run = env.check(&["generate", "--out", out.to_str().unwrap()], 0);
    assert!(
        run.stdout.contains("redactions: email 2, phone 0"),
        "{run:#?}"
    );
}

#[test]
fn malformed_lines_of_the_existing_file_are_reported_with_their_numbers() {
    let env = fixture();
    let existing = env.write(
        "old.jsonl",
        concat!(
            r#"{"messages":[{"role":"user","content":"old question one"},{"role":"assistant","content":"old answer one"}]}"#,
            "\n",
            "{this is not json\n",
            "\n",
            r#"{"prompt":"old question two","completion":"old answer two"}"#,
            "\n",
            r#"{"unrelated": true}"#,
            "\n",
        ),
    );
    let out = env.path("new.jsonl");
    let args = [
        "generate",
        "--out",
        out.to_str().unwrap(),
        "--existing",
        existing.to_str().unwrap(),
        "--rehearsal",
        "0.25",
        "--seed",
        "7",
    ];
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = env.check(&json_args, 0);
    let result = run.json();
    let report = &result["existing"];
    assert_eq!(report["lines"], 5, "{result}");
    assert_eq!(report["valid"], 2);
    assert_eq!(report["blank_lines"], 1);
    assert_eq!(report["malformed"], 2);
    let numbers: Vec<u64> = report["malformed_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["line"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 5]);
    assert!(
        result["rehearsal_samples"].as_u64().unwrap() >= 1,
        "{result}"
    );
    assert!(
        run.stderr.contains("warning: 2 lines of the existing file"),
        "{run:#?}"
    );
    assert_eq!(
        read_lines(&out).len() as u64,
        result["final_count"].as_u64().unwrap()
    );

    // The readable report lists them too.
    let run = env.check(&args, 0);
    assert!(run.stdout.contains("    line 2: "), "{run:#?}");
    assert!(run.stdout.contains("    line 5: "), "{run:#?}");
    assert!(run.stdout.contains("2 malformed"), "{run:#?}");

    // The same log, config and seed give the same file.
    let first = std::fs::read(&out).unwrap();
    env.check(&args, 0);
    assert_eq!(std::fs::read(&out).unwrap(), first);
}

#[test]
fn a_missing_existing_file_fails_and_writes_nothing() {
    let env = fixture();
    let out = env.path("out.jsonl");
    env.check_err(
        &[
            "generate",
            "--out",
            out.to_str().unwrap(),
            "--existing",
            "nope.jsonl",
        ],
        1,
        &["nope.jsonl"],
    );
    assert!(!out.exists());
}

#[test]
fn filters_from_flags() {
    let env = fixture();
    let out = env.path("out.jsonl");
    let out = out.to_str().unwrap();
    let count = |extra: &[&str]| {
        let mut args = vec!["generate", "--json", "--out", out];
        args.extend_from_slice(extra);
        env.check(&args, 0).json()["final_count"].as_u64().unwrap()
    };
    assert_eq!(count(&[]), 5);
    // Any feedback value, quality at least 0: every record (one duplicate query differs in
    // its response, so it stays).
    assert_eq!(count(&["--any-feedback", "--min-quality", "0"]), 7);
    assert_eq!(count(&["--min-feedback", "-1", "--min-quality", "0.25"]), 6);
    assert_eq!(
        count(&[
            "--model",
            "m2",
            "--min-feedback",
            "-1",
            "--min-quality",
            "0"
        ]),
        1
    );
    assert_eq!(count(&["--max-samples", "2"]), 2);
    assert_eq!(count(&["--since", "2025-06-01T11:00:30Z"]), 1);
    assert_eq!(count(&["--until", "30m"]), 5);
    assert_eq!(count(&["--since", "30m"]), 0);
    // The three "plain question number N" records differ in one character: near-duplicates
    // at the default threshold (0.8), not at 1.
    assert_eq!(count(&["--near-dedupe"]), 3);
    assert_eq!(count(&["--threshold", "1"]), 5);
    let prompt = count(&["--system-prompt", "Be brief.", "--format", "alpaca"]);
    assert_eq!(prompt, 5);
    let lines = read_lines(std::path::Path::new(out));
    assert!(
        lines.iter().all(|l| l["system"] == "Be brief."),
        "{lines:?}"
    );
}

#[test]
fn scores_are_written_back_unless_no_write_back() {
    let env = Env::new();
    env.import(&[line("an unscored question", "m1", json!({"feedback": 1}))]);
    let out = env.path("out.jsonl");
    let result = env
        .check(
            &[
                "generate",
                "--json",
                "--no-write-back",
                "--min-quality",
                "0",
                "--out",
                out.to_str().unwrap(),
            ],
            0,
        )
        .json();
    assert_eq!(result["scored_records"], 1);
    let records = env.check(&["records"], 0).json_lines();
    assert_eq!(records[0]["quality_score"], Value::Null);
    env.check(
        &[
            "generate",
            "--min-quality",
            "0",
            "--out",
            out.to_str().unwrap(),
        ],
        0,
    );
    let records = env.check(&["records"], 0).json_lines();
    assert!(records[0]["quality_score"].is_f64(), "{records:?}");
}

#[test]
fn invalid_flag_values_name_the_flag() {
    let env = fixture();
    let out = env.path("out.jsonl");
    let out = out.to_str().unwrap();
    let check = |extra: &[&str], code: i32, expected: &[&str]| {
        let mut args = vec!["generate", "--out", out];
        args.extend_from_slice(extra);
        env.check_err(&args, code, expected);
    };
    check(&["--min-quality", "1.5"], 3, &["--min-quality", "1.5"]);
    check(&["--min-quality", "NaN"], 3, &["--min-quality"]);
    check(&["--min-feedback", "2"], 3, &["--min-feedback", "2"]);
    check(&["--max-samples", "0"], 3, &["--max-samples"]);
    check(&["--threshold", "0"], 3, &["--threshold"]);
    check(&["--rehearsal", "0.2"], 3, &["--rehearsal", "--existing"]);
    check(
        &["--rehearsal", "1", "--existing", "x.jsonl"],
        3,
        &["--rehearsal"],
    );
    check(&["--since", "1h", "--until", "2h"], 3, &["--since"]);
    check(&["--model", ""], 3, &["--model"]);
    check(
        &["--shape", "plain"],
        3,
        &["invalid --shape: format chatml is conversational only"],
    );
    check(
        &["--format", "alpaca", "--shape", "conversational"],
        3,
        &["--shape", "alpaca is plain only"],
    );
    check(&["--shape", "lists"], 2, &["lists", "conversational"]);
    // An unknown format names the format meant.
    check(
        &["--format", "openai_dpo"],
        2,
        &["did you mean openai-dpo?"],
    );
    check(&["--format", "trl-dpo"], 2, &["did you mean dpo?"]);
    check(&["--format", "chatlm"], 2, &["did you mean chatml?"]);
    check(
        &["--min-feedback", "1", "--any-feedback"],
        2,
        &["--any-feedback"],
    );
    check(
        &["--no-near-dedupe", "--threshold", "0.5"],
        2,
        &["--threshold"],
    );
    check(&["--max-samples", "-1"], 2, &["-1"]);
    env.check_err(&["generate"], 2, &["--out"]);
    assert!(!std::path::Path::new(out).exists());
    // JSON errors carry the kind.
    let run = env.check(
        &["generate", "--json", "--out", out, "--min-quality", "2"],
        3,
    );
    let error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(error["kind"], "invalid_input");
}

#[test]
fn generate_needs_an_existing_database() {
    let env = Env::new();
    env.check_err(&["generate", "--out", "x.jsonl"], 1, &["does not exist"]);
}

#[test]
fn readable_summary() {
    let env = fixture();
    let out = env.path("summary.jsonl");
    let run = env.check(
        &[
            "generate",
            "--out",
            out.to_str().unwrap(),
            "--format",
            "dpo",
        ],
        0,
    );
    let text = redact_ids(&run.stdout).replace(env.dir.path().to_str().unwrap(), "[dir]");
    insta::with_settings!({filters => vec![(r"blake3: [0-9a-f]{64}", "blake3: [hash]")]}, {
        insta::assert_snapshot!("generate-summary", text);
    });
}

#[test]
fn an_interrupted_run_removes_its_files_and_leaves_the_old_output() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let env = fixture();
    let out = env.write("out.jsonl", "{\"text\":\"the previous output\"}\n");
    // The existing file is a FIFO: the run blocks reading it until the test closes it, so
    // the signal arrives while the run is under way, whatever the machine's speed.
    let fifo = env.path("existing.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut child = env
        .std_command_at(
            common::NOW,
            &[
                "generate",
                "--existing",
                fifo.to_str().unwrap(),
                "--rehearsal",
                "0.5",
                "--out",
                out.to_str().unwrap(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let within = Duration::from_secs(60);
    // Opening the FIFO for writing waits for afs to open it for reading.
    let (tx, rx) = mpsc::channel();
    let writer_path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(writer_path));
    });
    let Ok(writer) = rx.recv_timeout(within) else {
        let _ = child.kill();
        panic!(
            "afs never opened the existing file: {:?}",
            child.wait_with_output()
        );
    };
    let mut writer = writer.unwrap();
    writeln!(writer, "{{\"text\":\"an existing sample\"}}").unwrap();

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    // The handler sets the run's stop flag before it says so.
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next();
        let _ = tx.send(first);
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = tx.send(Some(Ok(rest.join("\n"))));
    });
    let said = rx.recv_timeout(within).unwrap().unwrap().unwrap();
    assert!(said.contains("stopping and removing"), "{said}");
    drop(writer);

    let status = child.wait().unwrap();
    let rest = rx.recv_timeout(within).unwrap().unwrap().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"text\":\"the previous output\"}\n"
    );
    let mut left: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("afs.db") && name != "fixture.jsonl")
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["existing.fifo", "out.jsonl"],
        "temporary files were left"
    );
}

#[test]
fn the_shape_and_metadata_are_options_of_their_own() {
    let env = fixture();
    let run = |name: &str, extra: &[&str]| {
        let out = env.path(name);
        let mut args = vec!["generate", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        env.check(&args, 0);
        read_lines(&out)
    };
    // A system prompt leaves a plain completion file plain: it starts the prompt string.
    let plain = run(
        "plain.jsonl",
        &["--format", "completion", "--system-prompt", "Be brief."],
    );
    for l in &plain {
        let prompt = l["prompt"].as_str().expect("a string prompt");
        assert!(
            prompt.starts_with("Be brief.\n\n") && prompt.ends_with("\n\n"),
            "{l}"
        );
        assert!(l["completion"].is_string(), "{l}");
    }
    // The conversational shape is asked for explicitly, with or without a system prompt.
    for extra in [&[][..], &["--system-prompt", "Be brief."]] {
        let mut args = vec!["--format", "kto", "--shape", "Conversational"];
        args.extend_from_slice(extra);
        for l in run("conv.jsonl", &args) {
            assert!(l["prompt"].is_array() && l["completion"].is_array(), "{l}");
            assert_eq!(
                l["prompt"][0]["role"],
                if extra.is_empty() { "user" } else { "system" }
            );
        }
    }
    // sharegpt carries the system turn inside the conversation.
    let sharegpt = run(
        "sharegpt.jsonl",
        &["--format", "sharegpt", "--system-prompt", "Be brief."],
    );
    let roles: Vec<&str> = sharegpt[0]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["from"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant"]);
    assert!(sharegpt[0].get("system").is_none());
    // chatml without metadata is the openai line.
    let bare = run("bare.jsonl", &["--no-metadata"]);
    let openai = run("openai.jsonl", &["--format", "openai"]);
    assert_eq!(bare, openai);
    assert!(run("meta.jsonl", &["--no-metadata", "--metadata"])[0]
        .get("metadata")
        .is_some());
}

#[test]
fn a_run_that_finds_no_records_says_why() {
    let env = fixture();
    let out = env.path("out.jsonl");
    let out = out.to_str().unwrap();
    // A misspelt model: the warning names the models the log has; the run still succeeds
    // with an empty file, as a scheduled job expects.
    let run = env.check_err(
        &["generate", "--model", "m3", "--out", out],
        0,
        &[r#"warning: no records of model "m3" (models in the log: m1, m2)"#],
    );
    assert!(run.stdout.contains("wrote 0 samples"), "{run:#?}");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "");
    env.check_err(
        &["generate", "--since", "2030-01-01T00:00:00Z", "--out", out],
        0,
        &["warning: no records at or after 2030-01-01T00:00:00Z; the output is empty"],
    );
    // Records found but all filtered out: an empty file is no dataset, so the warning
    // names the stages that dropped them, largest first.
    env.check_err(
        &["generate", "--min-quality", "1", "--out", out],
        0,
        &[
            "warning: no samples: of 7 records, 5 records were below the minimum quality 1, \
             2 records had no feedback of at least 1; the output",
        ],
    );
    // dpo with no query answered both ways: the reason is the missing counterparts.
    env.check_err(
        &["generate", "--format", "dpo", "--model", "m2", "--out", out],
        0,
        &["warning: no pairs: of 1 record, 1 record had no counterpart of opposite feedback"],
    );
    assert_eq!(std::fs::read_to_string(out).unwrap(), "");
    // An empty log.
    let empty = Env::new();
    empty.import(&[]);
    empty.check_err(
        &["generate", "--out", "out.jsonl"],
        0,
        &["warning: the log has no records; the output is empty"],
    );
}
