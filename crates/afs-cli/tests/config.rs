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
    check("[trainr]\ntrain_cmd = \"x\"\n", &["unknown key trainr"]);
    check(
        "[retrain]\ntrain_cmd = \"a\"\n[trainer]\ntrain_cmd = \"b\"\n",
        &["retrain.train_cmd and trainer.train_cmd are both set"],
    );
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

    // Every command reads the configuration (its [store] section applies to all), so an
    // invalid file stops every command; only `afs demo` reads none.
    env.check_err(&["stats"], 3, &["trigger.bogus"]);
    env.check_err(&["config", "check"], 3, &["trigger.bogus"]);
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

/// `afs ARGS` in `env` with the environment variables `vars` set.
fn run_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> common::Run {
    let mut cmd = env.command_at(common::NOW, args);
    for (name, value) in vars {
        cmd.env(name, value);
    }
    Env::run_command(cmd)
}

#[test]
fn config_show_reflects_the_file_the_environment_and_the_flags() {
    let env = Env::new();
    env.write(
        "afs.toml",
        "[trigger]\nmin_new_samples = 10\ncooldown_hours = 2\n\n[retrain]\ntrain_cmd = \"./train.sh {data}\"\n",
    );
    let vars = [
        ("AFS_TRIGGER__COOLDOWN_HOURS", "5"),
        ("AFS_LOOP__CHECK_INTERVAL", "2h"),
        // Not config keys: never mistaken for one.
        ("AFS_TOKENS", "secret"),
        ("AFS_SLOW_TESTS", "1"),
    ];
    let args = [
        "--set",
        "loop.check_interval=30m",
        "--set",
        "store.synchronous=full",
        "config",
        "show",
    ];
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = run_with(&env, &vars, &json_args);
    assert_eq!(run.code, 0, "{run:#?}");
    let shown = run.json();
    assert_eq!(shown["trigger"]["min_new_samples"], 10, "from the file");
    assert_eq!(shown["trigger"]["cooldown_hours"], 5.0, "the variable wins");
    assert_eq!(shown["loop"]["check_interval"], "30m", "the flag wins");
    assert_eq!(shown["store"]["synchronous"], "full");
    assert_eq!(
        shown["trainer"]["train_cmd"], "./train.sh {data}",
        "[retrain] is read"
    );
    assert_eq!(shown["abtest"]["guardrails"]["positive_rate"], false);
    assert_eq!(shown["generator"]["format"], "chatml", "a default");

    // The TOML output names its layers and is itself a valid config file.
    let run = run_with(&env, &vars, &args);
    assert_eq!(run.code, 0, "{run:#?}");
    for needle in [
        "#   file afs.toml\n",
        "#   environment AFS_LOOP__CHECK_INTERVAL\n",
        "#   environment AFS_TRIGGER__COOLDOWN_HOURS\n",
        "#   --set loop.check_interval\n",
        "[trainer]\ntrain_cmd = \"./train.sh {data}\"\n",
        "cooldown_hours = 5.0\n",
    ] {
        assert!(
            run.stdout.contains(needle),
            "lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("tokens"), "{}", run.stdout);
    env.write("shown.toml", &run.stdout);
    let again = env.check(&["--config", "shown.toml", "config", "show", "--json"], 0);
    assert_eq!(again.json(), shown);
}

#[test]
fn config_check_says_ok_or_names_the_key_and_exits_3() {
    let env = Env::new();
    let run = env.check(&["config", "check"], 0);
    assert!(run.stdout.starts_with("ok"), "{run:#?}");
    env.write("afs.toml", "[loop]\ncheck_interval = \"15m\"\n");
    let run = env.check(&["config", "check"], 0);
    assert_eq!(run.stdout.trim(), "ok (file afs.toml)");
    assert_eq!(
        env.check(&["config", "check", "--json"], 0).json()["ok"],
        true
    );

    // In the file: unknown key, wrong type, out of range, a combination the loop refuses.
    let file = |text: &str, expected: &[&str]| {
        env.write("afs.toml", text);
        env.check_err(&["config", "check"], 3, expected);
    };
    file(
        "[loop]\ncheck_intervall = \"1h\"\n",
        &[
            "afs.toml, line 2",
            "unknown key loop.check_intervall",
            "check_interval",
        ],
    );
    file(
        "[store]\npool_size = \"many\"\n",
        &["afs.toml, line 2", "store.pool_size", "invalid type"],
    );
    file(
        "[abtest]\nalpha = 1.5\n",
        &["config file afs.toml: abtest.alpha"],
    );
    file(
        "[generator]\nrehearsal_ratio = 0.2\n",
        &["config file afs.toml: generator.", "existing"],
    );
    std::fs::remove_file(env.path("afs.toml")).unwrap();

    // In the environment: the variable is named.
    let var = |name: &str, value: &str, expected: &[&str]| {
        let run = run_with(&env, &[(name, value)], &["config", "check"]);
        assert_eq!(run.code, 3, "{name}={value}: {run:#?}");
        for part in expected {
            assert!(
                run.stderr.contains(part),
                "{name}: lacks {part:?}: {run:#?}"
            );
        }
    };
    var(
        "AFS_TRIGGER__MIN_NEW_SAMPELS",
        "5",
        &[
            "environment variable AFS_TRIGGER__MIN_NEW_SAMPELS",
            "unknown key trigger.min_new_sampels",
        ],
    );
    var(
        "AFS_LOOP__ENABLE_AB_TESTING",
        "sometimes",
        &[
            "environment variable AFS_LOOP__ENABLE_AB_TESTING",
            "loop.enable_ab_testing",
            "invalid type",
        ],
    );
    var(
        "AFS_TRIGGER__QUALITY_DROP_THRESHOLD",
        "1.5",
        &["environment variable AFS_TRIGGER__QUALITY_DROP_THRESHOLD: trigger.quality_drop_threshold: 1.5"],
    );
    var(
        "AFS_LOOP__CHECK_INTERVAL",
        "0s",
        &["AFS_LOOP__CHECK_INTERVAL", "loop.check_interval"],
    );
    // Every command reads the environment, not only `afs config`.
    let run = run_with(&env, &[("AFS_STORE__POOL_SIZE", "0")], &["stats"]);
    assert_eq!(run.code, 3, "{run:#?}");
    assert!(
        run.stderr.contains("AFS_STORE__POOL_SIZE: store.pool_size"),
        "{run:#?}"
    );

    // And --set: the flag is named; a malformed flag is a usage error.
    env.check_err(
        &["--set", "abtest.bogus=1", "config", "check"],
        3,
        &["--set abtest.bogus", "unknown key abtest.bogus"],
    );
    env.check_err(
        &["--set", "trigger.cooldown_hours=-1", "config", "check"],
        3,
        &["--set trigger.cooldown_hours"],
    );
    env.check_err(&["--set", "nonsense", "config", "check"], 2, &["KEY=VALUE"]);
}

/// `afs config check` checks the trainer and eval command templates as `afs retrain` and
/// `afs loop` do at startup: a placeholder the shell would not expand is refused, naming
/// the key.
#[test]
fn config_check_refuses_command_templates_the_shell_would_get_wrong() {
    let env = fixture();
    env.check_err(
        &[
            "--set",
            "trainer.train_cmd=train '{data}'",
            "config",
            "check",
        ],
        3,
        &["trainer.train_cmd", "single quotes"],
    );
    env.check_err(
        &[
            "--set",
            "loop.eval_cmd=check '{model_path}'",
            "config",
            "check",
        ],
        3,
        &["loop.eval_cmd", "single quotes"],
    );
    env.check(
        &[
            "--set",
            "trainer.train_cmd=train \"{data}\" {output_dir}",
            "--set",
            "loop.eval_cmd=check {model_path}",
            "config",
            "check",
        ],
        0,
    );
}
