//! The config file end to end: where it is found, how its values and the flags combine, and
//! how a bad file is reported.

mod common;

use common::{example_config, good_records, line, Env};
use serde_json::{json, Value};

/// A log where the quality and feedback filters make a visible difference.
fn fixture() -> Env {
    let env = Env::new();
    let mut lines = good_records(2, "good");
    lines.push(line(
        "a middling answer",
        "m1",
        json!({"quality_score": 0.5, "feedback": 1}),
    ));
    lines.push(line(
        "no feedback at all",
        "m1",
        json!({"quality_score": 0.9}),
    ));
    env.import(&lines);
    env
}

/// `afs generate --json --out out.jsonl EXTRA` in `env`: the result.
fn generate(env: &Env, extra: &[&str]) -> Value {
    let mut args = vec!["generate", "--json", "--out", "out.jsonl"];
    args.extend_from_slice(extra);
    env.check(&args, 0).json()
}

#[test]
fn values_come_from_the_file_and_flags_override_them() {
    let env = fixture();
    // Defaults: thumbs-up and quality >= 0.7.
    let result = generate(&env, &[]);
    assert_eq!(result["final_count"], 2);
    assert_eq!(result["format"], "chatml");

    env.write(
        "afs.toml",
        "[generator]\nformat = \"alpaca\"\nmin_quality_score = 0.4\nmin_user_feedback = \"none\"\n",
    );
    let result = generate(&env, &[]);
    assert_eq!(result["format"], "alpaca");
    assert_eq!(result["final_count"], 4, "{result}");

    // Flags win over the file.
    let result = generate(
        &env,
        &[
            "--format",
            "text",
            "--min-quality",
            "0.8",
            "--min-feedback",
            "1",
        ],
    );
    assert_eq!(result["format"], "text");
    assert_eq!(result["final_count"], 2, "{result}");

    // A boolean the file turns off, a flag turns back on (and the last of a pair wins).
    env.write("afs.toml", "[generator]\nredact = false\n");
    env.import(&[line(
        "mail bob@example.org",
        "m1",
        json!({"quality_score": 0.9, "feedback": 1}),
    )]);
    assert_eq!(generate(&env, &[])["redactions"]["email"], 0);
    // The address is in the query and in the response.
    assert_eq!(generate(&env, &["--redact"])["redactions"]["email"], 2);
    assert_eq!(
        generate(&env, &["--redact", "--no-redact"])["redactions"]["email"],
        0
    );

    // A threshold in the file is used when a flag turns near-dedupe on.
    env.write("afs.toml", "[generator]\nnear_dedupe_threshold = 1.5\n");
    env.check_err(
        &["generate", "--out", "out.jsonl"],
        3,
        &["generator.near_dedupe_threshold", "afs.toml"],
    );
}

#[test]
fn the_file_is_found_by_flag_env_or_default_location() {
    let env = fixture();
    std::fs::create_dir(env.path("conf")).unwrap();
    let elsewhere = env.write("conf/other.toml", "[generator]\nformat = \"kto\"\n");
    env.write("afs.toml", "[generator]\nformat = \"text\"\n");

    assert_eq!(generate(&env, &[])["format"], "text", "./afs.toml is read");
    let flag = ["--config", elsewhere.to_str().unwrap()];
    assert_eq!(generate(&env, &flag)["format"], "kto", "--config wins");
    let mut cmd = env.command_at(common::NOW, &["generate", "--json", "--out", "out.jsonl"]);
    cmd.env("AFS_CONFIG", &elsewhere);
    let run = Env::run_command(cmd);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(
        run.json()["format"],
        "kto",
        "AFS_CONFIG wins over ./afs.toml"
    );

    // A missing default file is silently absent; a missing named file is an error.
    std::fs::remove_file(env.path("afs.toml")).unwrap();
    assert_eq!(generate(&env, &[])["format"], "chatml");
    env.check_err(
        &["--config", "missing.toml", "trigger", "check"],
        1,
        &["cannot read config file missing.toml"],
    );

    // Relative paths in the file are relative to its directory.
    std::fs::write(
        env.path("conf/old.jsonl"),
        "{\"text\": \"an old sample\"}\n",
    )
    .unwrap();
    std::fs::write(&elsewhere, "[generator]\nexisting = \"old.jsonl\"\n").unwrap();
    let result = generate(&env, &flag);
    assert_eq!(result["existing"]["valid"], 1, "{result}");
}

#[test]
fn a_bad_file_names_the_key_and_exits_3() {
    let env = fixture();
    let check = |text: &str, expected: &[&str]| {
        env.write("afs.toml", text);
        for command in [
            &["trigger", "check"][..],
            &["generate", "--out", "out.jsonl"],
            &["retrain", "--train-cmd", "true"],
        ] {
            env.check_err(command, 3, expected);
        }
    };
    // Unknown key, wrong type, out of range, unknown section, broken syntax.
    check(
        "[trigger]\nmin_new_sampels = 10\n",
        &["afs.toml, line 2", "unknown key trigger.min_new_sampels"],
    );
    check(
        "[trigger]\ncooldown_hours = \"1d\"\n",
        &["afs.toml, line 2", "trigger.cooldown_hours", "invalid type"],
    );
    check(
        "[trigger.page_hinkley]\nalpha = 2.0\n",
        &["afs.toml", "trigger.page_hinkley.alpha", "2"],
    );
    check(
        "[trigger]\nerror_rate_threshold = -0.1\n",
        &["trigger.error_rate_threshold"],
    );
    check(
        "[generator]\nmin_quality_score = 1.1\n",
        &["generator.min_quality_score", "1.1"],
    );
    check(
        "[generator]\nformat = \"jsonl\"\n",
        &["generator.format", "jsonl"],
    );
    check(
        "[generator]\nmin_user_feedback = 5\n",
        &["generator.min_user_feedback"],
    );
    check("[retrain]\ntimeout_secs = 0\n", &["retrain.timeout_secs"]);
    check(
        "[retrain]\ntimeout_secs = 1.5\n",
        &["retrain.timeout_secs", "invalid type"],
    );
    check("[trainer]\ntrain_cmd = \"x\"\n", &["unknown key trainer"]);
    check("[trigger\n", &["afs.toml, line 1"]);

    // With --json the error is JSON too.
    env.write("afs.toml", "[trigger]\nbogus = 1\n");
    let run = env.check(&["trigger", "check", "--json"], 3);
    let error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(error["kind"], "invalid_input");
    assert!(
        error["error"].as_str().unwrap().contains("trigger.bogus"),
        "{error}"
    );

    // Commands that do not use the config file do not read it.
    env.check(&["stats"], 0);
}

#[test]
fn the_example_file_is_valid_and_holds_the_defaults() {
    let env = fixture();
    let example = example_config();
    let example = example.to_str().unwrap();
    let with_example = generate(&env, &["--config", example]);
    std::fs::remove_file(env.path("out.jsonl")).unwrap();
    let without = generate(&env, &[]);
    assert_eq!(with_example["final_count"], without["final_count"]);
    assert_eq!(with_example["format"], without["format"]);
    let run = env.check(&["--config", example, "trigger", "check", "--json"], 0);
    assert_eq!(
        run.json()["metrics"]["sample_count.min_new_samples"],
        1000.0
    );
}
