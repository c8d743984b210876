//! Tests of the configuration: the file alone, the layers, and how errors name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use afs_abtest::{AbTestConfig, BanditConfig, Guardrail, Metric, PrimaryMetric};
use afs_datagen::Format;
use afs_trigger::{PageHinkleyConfig, TriggerConfig};

use super::*;

/// The example file at the repository root.
const EXAMPLE: &str = include_str!("../../../../afs.example.toml");

fn parse_text(text: &str) -> Result<Config, String> {
    parse(text, Path::new("afs.toml")).map_err(|e| e.0)
}

/// Checks that `text` is refused with a message containing every one of `expected`.
fn check_err(text: &str, expected: &[&str]) {
    let err = parse_text(text).expect_err(text);
    for part in expected {
        assert!(err.contains(part), "{text:?}: {err:?} lacks {part:?}");
    }
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    let config = parse_text(EXAMPLE).unwrap();
    let defaults = Config::default();
    assert_eq!(config.trigger, defaults.trigger);
    assert_eq!(config.generator, defaults.generator);
    assert_eq!(config.near_dedupe, defaults.near_dedupe);
    assert_eq!(config.retrain.timeout, defaults.retrain.timeout);
    assert_eq!(config.retrain, defaults.retrain);
    assert_eq!(config.retrain.train_cmd, None);
    assert_eq!(config.abtest, defaults.abtest);
    assert_eq!(config.abtest, AbTestConfig::default());
    assert_eq!(config.store, defaults.store);
    assert_eq!(config.loop_settings, defaults.loop_settings);
}

#[test]
fn the_commented_out_keys_of_the_example_are_valid_too() {
    // Uncomment `# key = value` lines (not prose comments) and parse again.
    let uncommented: String = EXAMPLE
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert_ne!(uncommented, EXAMPLE, "the example has no optional keys");
    let config = parse_text(&uncommented).unwrap();
    assert!(config.retrain.train_cmd.is_some());
    assert!(config.generator.max_samples.is_some());
    assert!(config.generator.system_prompt.is_some());
    assert!(config.loop_settings.eval_cmd.is_some());
    assert!(config.loop_config().initial_champion.is_some());
    assert!(config.loop_settings.training_window.is_some());
}

#[test]
fn the_toml_examples_of_the_docs_are_valid() {
    let docs = [
        include_str!("../../../../docs/CONFIGURATION.md"),
        include_str!("../../../../docs/CLI.md"),
        include_str!("../../../../docs/OPERATIONS.md"),
    ];
    let mut n_blocks = 0;
    for doc in docs {
        for block in doc.split("```toml\n").skip(1) {
            let text = block.split("```").next().unwrap();
            if let Err(err) = parse_text(text) {
                panic!("{err}\n{text}");
            }
            n_blocks += 1;
        }
    }
    assert!(n_blocks >= 2, "only {n_blocks} TOML examples found");
}

#[test]
fn every_key_maps_onto_its_field() {
    let config = parse_text(
        r#"
[trigger]
enable_sample_count = false
min_new_samples = 5
enable_scheduled = false
schedule_interval_hours = 2.5
schedule_on_first_run = true
enable_quality_drop = false
quality_drop_threshold = 0.25
quality_window_hours = 6
min_quality_samples = 7
enable_page_hinkley = true
enable_error_rate = true
error_rate_threshold = 0.5
error_rate_window_hours = 12
min_feedback_events = 3
cooldown_hours = 0

[trigger.page_hinkley]
min_instances = 11
delta = 0.02
threshold = 4
alpha = 0.99

[generator]
min_quality_score = 0.5
min_user_feedback = "none"
deduplicate = false
near_dedupe = true
near_dedupe_threshold = 0.9
format = "alpaca"
max_samples = 100
redact = false
existing = "old.jsonl"
rehearsal_ratio = 0.25
seed = 42
model = "m1"
system_prompt = "Be brief."
write_back_scores = false

[retrain]
train_cmd = "true"
timeout_secs = 60
min_samples_for_retrain = 3
output_dir = "out"
dataset_name = "data.jsonl"
"#,
    )
    .unwrap();
    let expected_trigger = TriggerConfig {
        enable_sample_count: false,
        min_new_samples: 5,
        enable_scheduled: false,
        schedule_interval_hours: 2.5,
        schedule_on_first_run: true,
        enable_quality_drop: false,
        quality_drop_threshold: 0.25,
        quality_window_hours: 6.0,
        min_quality_samples: 7,
        enable_page_hinkley: true,
        page_hinkley: PageHinkleyConfig {
            min_instances: 11,
            delta: 0.02,
            threshold: 4.0,
            alpha: 0.99,
        },
        enable_error_rate: true,
        error_rate_threshold: 0.5,
        error_rate_window_hours: 12.0,
        min_feedback_events: 3,
        cooldown_hours: 0.0,
    };
    assert_eq!(config.trigger, expected_trigger);
    let g = &config.generator;
    assert_eq!(g.min_quality_score, 0.5);
    assert_eq!(g.min_user_feedback, None);
    assert!(!g.deduplicate);
    assert_eq!(g.near_dedupe.as_ref().map(|n| n.threshold), Some(0.9));
    assert_eq!(g.format, Format::Alpaca);
    assert_eq!(g.max_samples, Some(100));
    assert!(!g.redact);
    assert_eq!(g.existing.as_deref(), Some(Path::new("old.jsonl")));
    assert_eq!(g.rehearsal_ratio, 0.25);
    assert_eq!(g.seed, 42);
    assert_eq!(g.model.as_deref(), Some("m1"));
    assert_eq!(g.system_prompt.as_deref(), Some("Be brief."));
    assert!(!g.write_back_scores);
    let r = &config.retrain;
    assert_eq!(r.train_cmd.as_deref(), Some("true"));
    assert_eq!(r.timeout, Duration::from_secs(60));
    assert_eq!(r.min_samples_for_retrain, 3);
    assert_eq!(r.output_dir, PathBuf::from("out"));
    assert_eq!(r.dataset_name, "data.jsonl");
}

#[test]
fn every_abtest_key_maps_onto_its_field() {
    let config = parse_text(
        r#"
[abtest]
initial_challenger_traffic = 0.2
min_samples_per_version = 500
min_improvement_threshold = 0.1
enable_auto_promotion = false
promotion_threshold = 0.01
min_duration_hours = 72
primary_metric = "positive_rate"
alpha = 0.01
min_lift = 0.02
expected_effect = 0.1
min_feedback_per_version = 50
enable_auto_rollback = false
srm_p_threshold = 0.0001
srm_min_deviation = 0.005
check_interval_hours = 2
enable_bandit = true
min_units_per_arm = 200
ratio_metrics = ["latency_ms", "negative_rate"]
cuped = false
cuped_lookback_days = 7.5
feedback_maturity_hours = 24

[abtest.guardrails]
latency_ms = 0.2
negative_rate = false
quality = 0.05

[abtest.bandit]
arm_floor = 0.05
champion_floor = 0.3
draws = 200
"#,
    )
    .unwrap();
    let expected = AbTestConfig {
        initial_challenger_traffic: 0.2,
        min_samples_per_version: 500,
        min_improvement_threshold: 0.1,
        enable_auto_promotion: false,
        promotion_threshold: 0.01,
        min_duration_hours: 72.0,
        primary_metric: PrimaryMetric::PositiveRate,
        alpha: 0.01,
        min_lift: 0.02,
        expected_effect: 0.1,
        min_feedback_per_version: 50,
        guardrails: vec![
            Guardrail {
                metric: Metric::Latency,
                margin: 0.2,
            },
            Guardrail {
                metric: Metric::Quality,
                margin: 0.05,
            },
        ],
        enable_auto_rollback: false,
        srm_p_threshold: 0.0001,
        srm_min_deviation: 0.005,
        check_interval_hours: 2.0,
        bandit: Some(BanditConfig {
            arm_floor: 0.05,
            champion_floor: 0.3,
            draws: 200,
        }),
        min_units_per_arm: 200,
        ratio_metrics: vec![Metric::Latency, Metric::NegativeRate],
        cuped: false,
        cuped_lookback_days: 7.5,
        feedback_maturity_hours: 24.0,
    };
    assert_eq!(config.abtest, expected);
}

#[test]
fn abtest_unit_analysis_keys() {
    let abtest = |text: &str| parse_text(text).unwrap().abtest;
    let defaults = abtest("");
    assert_eq!(defaults.min_units_per_arm, 50);
    assert!(defaults.ratio_metrics.is_empty());
    assert!(defaults.cuped);
    assert_eq!(defaults.cuped_lookback_days, 14.0);
    assert_eq!(defaults.feedback_maturity_hours, 0.0);
    assert!(abtest("[abtest]\nratio_metrics = []\n")
        .ratio_metrics
        .is_empty());
    let every = abtest(
        "[abtest]\nratio_metrics = [\"quality\", \"positive_rate\", \"negative_rate\", \
         \"latency_ms\"]\ncuped_lookback_days = 0\nmin_units_per_arm = 0\n",
    );
    assert_eq!(every.ratio_metrics, Metric::ALL);
    assert_eq!(every.cuped_lookback_days, 0.0);
    assert_eq!(every.min_units_per_arm, 0);
    // Text is a comma-separated list, in the file too (as serve.tokens).
    assert_eq!(
        abtest("[abtest]\nratio_metrics = \"quality\"\n").ratio_metrics,
        [Metric::Quality]
    );

    // Variables and flags give the list as comma-separated text; empty text is none.
    let config = layered(
        "[abtest]\nratio_metrics = [\"quality\"]\n",
        &[
            ("AFS_ABTEST__RATIO_METRICS", "latency_ms, positive_rate"),
            ("AFS_ABTEST__CUPED", "false"),
            ("AFS_ABTEST__MIN_UNITS_PER_ARM", "10"),
        ],
        &[
            "abtest.feedback_maturity_hours=6",
            "abtest.cuped_lookback_days=3",
        ],
    )
    .unwrap();
    assert_eq!(
        config.abtest.ratio_metrics,
        [Metric::Latency, Metric::PositiveRate]
    );
    assert!(!config.abtest.cuped);
    assert_eq!(config.abtest.min_units_per_arm, 10);
    assert_eq!(config.abtest.feedback_maturity_hours, 6.0);
    assert_eq!(config.abtest.cuped_lookback_days, 3.0);
    let config = layered(
        "[abtest]\nratio_metrics = [\"quality\"]\n",
        &[],
        &["abtest.ratio_metrics="],
    )
    .unwrap();
    assert!(config.abtest.ratio_metrics.is_empty());
}

#[test]
fn abtest_unit_analysis_errors_name_the_key() {
    // A bad value of each key, in the file.
    check_err(
        "[abtest]\nmin_units_per_arm = -1\n",
        &["line 2", "abtest.min_units_per_arm"],
    );
    check_err(
        "[abtest]\nmin_units_per_arm = 1.5\n",
        &["line 2", "abtest.min_units_per_arm"],
    );
    check_err(
        "[abtest]\nratio_metrics = [\"quality\", \"latency\"]\n",
        &[
            "line 2",
            "abtest.ratio_metrics",
            "unknown variant `latency`",
            "quality",
            "positive_rate",
            "negative_rate",
            "latency_ms",
        ],
    );
    check_err(
        "[abtest]\nratio_metrics = 1\n",
        &["line 2", "abtest.ratio_metrics", "array of metric keys"],
    );
    check_err(
        "[abtest]\nratio_metrics = [\"quality\", \"quality\"]\n",
        &[
            "config file afs.toml: abtest.ratio_metrics",
            "quality is listed twice",
        ],
    );
    check_err("[abtest]\ncuped = \"yes\"\n", &["line 2", "abtest.cuped"]);
    check_err(
        "[abtest]\ncuped_lookback_days = -1\n",
        &["config file afs.toml: abtest.cuped_lookback_days: -1"],
    );
    check_err(
        "[abtest]\nfeedback_maturity_hours = -0.5\n",
        &["config file afs.toml: abtest.feedback_maturity_hours: -0.5"],
    );
    check_err(
        "[abtest]\nfeedback_maturity_hours = nan\n",
        &["config file afs.toml: abtest.feedback_maturity_hours: NaN"],
    );

    // And in a variable or a flag.
    check_layered_err(
        "",
        &[("AFS_ABTEST__RATIO_METRICS", "quality,thumbs")],
        &[],
        &[
            "environment variable AFS_ABTEST__RATIO_METRICS",
            "abtest.ratio_metrics",
            "unknown variant `thumbs`",
            "latency_ms",
        ],
    );
    check_layered_err(
        "",
        &[],
        &["abtest.ratio_metrics=quality,,latency_ms"],
        &["--set abtest.ratio_metrics", "unknown variant ``"],
    );
    check_layered_err(
        "",
        &[],
        &["abtest.ratio_metrics=latency_ms,latency_ms"],
        &["--set abtest.ratio_metrics", "latency_ms is listed twice"],
    );
    check_layered_err(
        "",
        &[("AFS_ABTEST__MIN_UNITS_PER_ARM", "some")],
        &[],
        &[
            "environment variable AFS_ABTEST__MIN_UNITS_PER_ARM",
            "abtest.min_units_per_arm",
            "invalid type",
        ],
    );
    check_layered_err(
        "",
        &[("AFS_ABTEST__CUPED", "maybe")],
        &[],
        &["AFS_ABTEST__CUPED", "abtest.cuped"],
    );
    check_layered_err(
        "",
        &[],
        &["abtest.cuped_lookback_days=-3"],
        &["--set abtest.cuped_lookback_days", "-3"],
    );
    check_layered_err(
        "",
        &[],
        &["abtest.feedback_maturity_hours=-1"],
        &["--set abtest.feedback_maturity_hours", "-1"],
    );
}

#[test]
fn abtest_guardrails_and_bandit_defaults() {
    let abtest = |text: &str| parse_text(text).unwrap().abtest;
    // A guardrail left out keeps its default; `false` removes one.
    let only_latency = abtest("[abtest.guardrails]\nnegative_rate = false\n");
    assert_eq!(
        only_latency.guardrails,
        vec![Guardrail {
            metric: Metric::Latency,
            margin: 0.1
        }]
    );
    let none = abtest("[abtest.guardrails]\nlatency_ms = false\nnegative_rate = false\n");
    assert!(none.guardrails.is_empty());
    let integer_margin = abtest("[abtest.guardrails]\nlatency_ms = 1\n");
    assert_eq!(integer_margin.guardrails[0].margin, 1.0);
    // The bandit's table alone does not switch it on.
    assert_eq!(abtest("[abtest.bandit]\ndraws = 10\n").bandit, None);
    assert_eq!(
        abtest("[abtest]\nenable_bandit = true\n").bandit,
        Some(BanditConfig::default())
    );
}

#[test]
fn abtest_errors_name_the_key() {
    let check = |text: &str, key: &str| check_err(text, &["config file afs.toml: ", key]);
    check(
        "[abtest]\ninitial_challenger_traffic = 1.5",
        "abtest.initial_challenger_traffic: 1.5",
    );
    check("[abtest]\nalpha = 0", "abtest.alpha");
    check(
        "[abtest]\nmin_duration_hours = -1",
        "abtest.min_duration_hours",
    );
    check("[abtest]\nexpected_effect = 0", "abtest.expected_effect");
    check(
        "[abtest]\ncheck_interval_hours = 0",
        "abtest.check_interval_hours",
    );
    check("[abtest]\nsrm_p_threshold = 1", "abtest.srm_p_threshold");
    check(
        "[abtest.guardrails]\nlatency_ms = 0",
        "abtest.guardrails.latency_ms: 0 is not a margin > 0",
    );
    check(
        "[abtest.guardrails]\nquality = 0.1",
        "abtest.guardrails.quality: quality is the primary metric",
    );
    check(
        "[abtest]\nprimary_metric = \"positive_rate\"\n[abtest.guardrails]\npositive_rate = 0.1",
        "abtest.guardrails.positive_rate",
    );
    // A bad bandit setting is refused even while the bandit is off.
    check(
        "[abtest.bandit]\narm_floor = 0.6",
        "abtest.bandit.arm_floor",
    );
    check(
        "[abtest.bandit]\nchampion_floor = 1",
        "abtest.bandit.champion_floor",
    );
    check("[abtest.bandit]\ndraws = 0", "abtest.bandit.draws");
    check_err(
        "[abtest]\nprimary_metric = \"latency\"\n",
        &[
            "line 2",
            "abtest.primary_metric",
            "quality",
            "positive_rate",
        ],
    );
    check_err(
        "[abtest]\nmin_sample_per_version = 5\n",
        &["line 2", "unknown key abtest.min_sample_per_version"],
    );
    check_err(
        "[abtest.guardrails]\nlatency = 0.1\n",
        &["unknown key abtest.guardrails.latency", "latency_ms"],
    );
    check_err(
        "[abtest.guardrails]\nlatency_ms = true\n",
        &["line 2", "abtest.guardrails.latency_ms", "or false"],
    );
    check_err(
        "[abtest.bandit]\ndraws = -1\n",
        &["line 2", "abtest.bandit.draws"],
    );
}

#[test]
fn feedback_takes_an_integer_or_none() {
    let feedback = |text: &str| parse_text(text).map(|c| c.generator.min_user_feedback);
    assert_eq!(
        feedback("[generator]\nmin_user_feedback = -1"),
        Ok(Some(-1))
    );
    assert_eq!(feedback("[generator]\nmin_user_feedback = 0"), Ok(Some(0)));
    assert_eq!(
        feedback("[generator]\nmin_user_feedback = \"none\""),
        Ok(None)
    );
    assert_eq!(feedback(""), Ok(Some(1)));
    check_err(
        "[generator]\nmin_user_feedback = 2",
        &["generator.min_user_feedback", "2 is not one of -1, 0, 1"],
    );
    check_err(
        "[generator]\nmin_user_feedback = \"all\"",
        &[
            "line 2",
            "generator.min_user_feedback",
            "\"all\"",
            "\"none\"",
        ],
    );
}

#[test]
fn errors_name_the_file_the_key_and_the_line() {
    check_err(
        "[trigger]\nbogus = 1\n",
        &[
            "config file afs.toml, line 2",
            "unknown key trigger.bogus",
            "min_new_samples",
        ],
    );
    check_err(
        "[trigger]\nmin_new_samples = \"many\"\n",
        &[
            "line 2",
            "trigger.min_new_samples",
            "invalid type: string \"many\", expected u64",
        ],
    );
    check_err(
        "[trigger]\nmin_new_samples = -5\n",
        &["trigger.min_new_samples", "-5"],
    );
    check_err(
        "\n[trigger.page_hinkley]\ndelta = true\n",
        &["line 3", "trigger.page_hinkley.delta"],
    );
    check_err(
        "[trigger.page_hinkley]\nfoo = 1\n",
        &["unknown key trigger.page_hinkley.foo"],
    );
    check_err(
        "[trainr]\ntrain_cmd = \"x\"\n",
        &["line 1", "unknown key trainr", "trainer"],
    );
    check_err("[trigger\n", &["config file afs.toml, line 1"]);
    check_err(
        "trigger = 3\n",
        &["trigger", "expected struct TriggerConfig"],
    );
}

#[test]
fn out_of_range_values_name_the_key() {
    let check = |text: &str, key: &str| check_err(text, &["config file afs.toml: ", key]);
    check(
        "[trigger]\nquality_drop_threshold = 1.5",
        "trigger.quality_drop_threshold: 1.5",
    );
    check("[trigger]\ncooldown_hours = -1", "trigger.cooldown_hours");
    check(
        "[trigger]\nschedule_interval_hours = 0",
        "trigger.schedule_interval_hours",
    );
    check(
        "[trigger.page_hinkley]\nalpha = 0",
        "trigger.page_hinkley.alpha",
    );
    check(
        "[generator]\nmin_quality_score = 2",
        "generator.min_quality_score",
    );
    check("[generator]\nmax_samples = 0", "generator.max_samples");
    check(
        "[generator]\nrehearsal_ratio = 1",
        "generator.rehearsal_ratio",
    );
    check(
        "[generator]\nnear_dedupe_threshold = 0",
        "generator.near_dedupe_threshold",
    );
    // A name that is not a format is refused while the file is read, with its line.
    check_err(
        "[generator]\nformat = \"jsonl\"",
        &[
            "config file afs.toml, line 2: ",
            "generator.format: unknown format \"jsonl\"",
        ],
    );
    check_err(
        "[generator]\nformat = \"openai_dpo\"",
        &["line 2", "did you mean openai-dpo?"],
    );
    check_err(
        "[generator]\nshape = \"lists\"",
        &["line 2", "generator.shape: unknown shape"],
    );
    check(
        "[generator]\nformat = \"chatml\"\nshape = \"plain\"",
        "generator.shape: format chatml is conversational only",
    );
    check("[generator]\nmodel = \"\"", "generator.model");
    check("[retrain]\ntrain_cmd = \" \"", "retrain.train_cmd");
    check("[retrain]\ntimeout_secs = 0", "retrain.timeout_secs");
    check(
        "[retrain]\nmin_samples_for_retrain = 0",
        "retrain.min_samples_for_retrain",
    );
    check(
        "[retrain]\ndataset_name = \"a/b.jsonl\"",
        "retrain.dataset_name",
    );
    check("[retrain]\noutput_dir = \"\"", "retrain.output_dir");
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let text = "[generator]\nexisting = \"old.jsonl\"\n[retrain]\noutput_dir = \"out\"\n";
    let config = parse(text, Path::new("/etc/afs/afs.toml")).unwrap();
    assert_eq!(
        config.generator.existing.as_deref(),
        Some(Path::new("/etc/afs/old.jsonl"))
    );
    assert_eq!(config.retrain.output_dir, Path::new("/etc/afs/out"));
    let config = parse("", Path::new("/etc/afs/afs.toml")).unwrap();
    assert_eq!(
        config.retrain.output_dir,
        Path::new("/etc/afs/continuous_output")
    );
    let text = "[retrain]\noutput_dir = \"/var/afs\"\n";
    let config = parse(text, Path::new("conf/afs.toml")).unwrap();
    assert_eq!(config.retrain.output_dir, Path::new("/var/afs"));
    let config = parse("", Path::new("afs.toml")).unwrap();
    assert_eq!(config.retrain.output_dir, Path::new("continuous_output"));
}

#[test]
fn shape_and_metadata_keys() {
    let config =
        parse_text("[generator]\nformat = \"dpo\"\nshape = \"conversational\"\nmetadata = false")
            .unwrap();
    assert_eq!(
        config.generator.shape,
        Some(afs_datagen::Shape::Conversational)
    );
    assert!(!config.generator.metadata);
    // Without a format in the same file, `afs generate --format` may give one that has the
    // shape, so the combination is left to the command.
    let config = parse_text("[generator]\nshape = \"plain\"").unwrap();
    assert_eq!(config.generator.shape, Some(afs_datagen::Shape::Plain));
}

#[test]
fn rehearsal_without_an_existing_file_is_left_to_the_command() {
    let config = parse_text("[generator]\nrehearsal_ratio = 0.2").unwrap();
    assert_eq!(config.generator.rehearsal_ratio, 0.2);
    assert_eq!(config.generator.existing, None);
}

#[test]
fn file_names() {
    assert!(check_file_name("train.jsonl").is_ok());
    for bad in ["", " ", "a/b", "/x", ".", ".."] {
        assert!(check_file_name(bad).is_err(), "{bad:?}");
    }
}

fn env(vars: &[(&str, &str)]) -> Vec<EnvVar> {
    vars.iter()
        .map(|(name, value)| EnvVar {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

fn flags(flags: &[&str]) -> Vec<Override> {
    flags.iter().map(|f| parse_override(f).unwrap()).collect()
}

/// Builds from an `afs.toml` holding `text`, the variables `vars` and the flags `set`.
fn layered(text: &str, vars: &[(&str, &str)], set: &[&str]) -> Result<Config, String> {
    build(Some((Path::new("afs.toml"), text)), &env(vars), &flags(set)).map_err(|e| e.0)
}

/// Checks that the layers are refused with a message containing every one of `expected`.
fn check_layered_err(text: &str, vars: &[(&str, &str)], set: &[&str], expected: &[&str]) {
    let err = layered(text, vars, set).expect_err(text);
    for part in expected {
        assert!(
            err.contains(part),
            "{vars:?} {set:?}: {err:?} lacks {part:?}"
        );
    }
}

#[test]
fn environment_and_flags_override_the_file_in_that_order() {
    let text =
        "[trigger]\nmin_new_samples = 10\ncooldown_hours = 2\n[loop]\ncheck_interval = \"2h\"\n";
    let config = layered(text, &[], &[]).unwrap();
    assert_eq!(config.trigger.min_new_samples, 10);
    assert_eq!(
        config.loop_settings.check_interval,
        Duration::from_secs(7200)
    );

    let vars = [
        ("AFS_TRIGGER__MIN_NEW_SAMPLES", "500"),
        ("AFS_LOOP__CHECK_INTERVAL", "30m"),
        ("AFS_TRIGGER__PAGE_HINKLEY__ALPHA", "0.5"),
        ("AFS_GENERATOR__MIN_USER_FEEDBACK", "-1"),
        ("AFS_GENERATOR__MODEL", "007"),
        ("AFS_ABTEST__GUARDRAILS__LATENCY_MS", "false"),
        ("AFS_ABTEST__ENABLE_BANDIT", "true"),
        ("AFS_STORE__SYNCHRONOUS", "full"),
    ];
    let config = layered(text, &vars, &[]).unwrap();
    assert_eq!(config.trigger.min_new_samples, 500);
    assert_eq!(
        config.trigger.cooldown_hours, 2.0,
        "the file's other keys stay"
    );
    assert_eq!(config.trigger.page_hinkley.alpha, 0.5);
    assert_eq!(config.generator.min_user_feedback, Some(-1));
    assert_eq!(
        config.generator.model.as_deref(),
        Some("007"),
        "text stays text"
    );
    assert_eq!(
        config.loop_settings.check_interval,
        Duration::from_secs(1800)
    );
    assert_eq!(
        config.abtest.guardrails.len(),
        1,
        "{:?}",
        config.abtest.guardrails
    );
    assert!(config.abtest.bandit.is_some());
    assert_eq!(
        config.store.synchronous,
        afs_store_sqlite::Synchronous::Full
    );
    assert_eq!(
        config.key_name("trigger.min_new_samples"),
        "trigger.min_new_samples (from AFS_TRIGGER__MIN_NEW_SAMPLES)"
    );
    assert_eq!(
        config.key_name("trigger.cooldown_hours"),
        "trigger.cooldown_hours in afs.toml"
    );

    let config = layered(
        text,
        &vars,
        &[
            "trigger.min_new_samples=7",
            "loop.check_interval=90",
            "generator.model=m2",
        ],
    )
    .unwrap();
    assert_eq!(config.trigger.min_new_samples, 7);
    assert_eq!(config.loop_settings.check_interval, Duration::from_secs(90));
    assert_eq!(config.generator.model.as_deref(), Some("m2"));
    assert_eq!(
        config.sources.describe(),
        [
            "file afs.toml",
            "environment AFS_ABTEST__ENABLE_BANDIT",
            "environment AFS_ABTEST__GUARDRAILS__LATENCY_MS",
            "environment AFS_GENERATOR__MIN_USER_FEEDBACK",
            "environment AFS_GENERATOR__MODEL",
            "environment AFS_LOOP__CHECK_INTERVAL",
            "environment AFS_STORE__SYNCHRONOUS",
            "environment AFS_TRIGGER__MIN_NEW_SAMPLES",
            "environment AFS_TRIGGER__PAGE_HINKLEY__ALPHA",
            "--set generator.model",
            "--set loop.check_interval",
            "--set trigger.min_new_samples",
        ]
    );
}

#[test]
fn a_bad_variable_or_flag_is_named() {
    let check = |vars: &[(&str, &str)], expected: &[&str]| {
        check_layered_err("", vars, &[], expected);
    };
    check(
        &[("AFS_TRIGGER__MIN_NEW_SAMPELS", "5")],
        &[
            "environment variable AFS_TRIGGER__MIN_NEW_SAMPELS",
            "unknown key trigger.min_new_sampels",
            "min_new_samples",
        ],
    );
    check(
        &[("AFS_TRIGER__MIN_NEW_SAMPLES", "5")],
        &[
            "environment variable AFS_TRIGER__MIN_NEW_SAMPLES",
            "unknown key triger",
        ],
    );
    check(
        &[("AFS_TRIGGER__MIN_NEW_SAMPLES", "many")],
        &[
            "environment variable AFS_TRIGGER__MIN_NEW_SAMPLES",
            "trigger.min_new_samples",
            "invalid type",
        ],
    );
    check(
        &[("AFS_TRIGGER__ENABLE_SCHEDULED", "maybe")],
        &["AFS_TRIGGER__ENABLE_SCHEDULED", "trigger.enable_scheduled"],
    );
    check(
        &[("AFS_TRIGGER__QUALITY_DROP_THRESHOLD", "1.5")],
        &["environment variable AFS_TRIGGER__QUALITY_DROP_THRESHOLD: trigger.quality_drop_threshold: 1.5"],
    );
    check(
        &[("AFS_LOOP__CHECK_INTERVAL", "soon")],
        &["AFS_LOOP__CHECK_INTERVAL", "loop.check_interval", "soon"],
    );
    check(
        &[("AFS_LOOP__CHECK_INTERVAL", "0")],
        &["AFS_LOOP__CHECK_INTERVAL", "loop.check_interval"],
    );
    check(
        &[("AFS_STORE__SYNCHRONOUS", "off")],
        &["AFS_STORE__SYNCHRONOUS", "store.synchronous"],
    );
    check(
        &[("AFS_STORE__POOL_SIZE", "0")],
        &["AFS_STORE__POOL_SIZE: store.pool_size: 0 is not within 1..=64"],
    );
    check(
        &[
            ("AFS_RETRAIN__TIMEOUT_SECS", "5"),
            ("AFS_TRAINER__TIMEOUT_SECS", "6"),
        ],
        &[
            "AFS_RETRAIN__TIMEOUT_SECS",
            "AFS_TRAINER__TIMEOUT_SECS",
            "keep one",
        ],
    );
    check_layered_err(
        "",
        &[],
        &["trigger.bogus=1"],
        &["--set trigger.bogus", "unknown key trigger.bogus"],
    );
    check_layered_err(
        "",
        &[],
        &["abtest.alpha=2"],
        &["--set abtest.alpha", "abtest.alpha"],
    );
    check_layered_err(
        "",
        &[],
        &["trigger.min_new_samples=-1"],
        &["--set trigger.min_new_samples", "invalid"],
    );
    // A value from the file that a variable overrides is not checked on its own: the
    // variable's value is what counts, and the file's message would name the wrong source.
    let config = layered(
        "[trigger]\ncooldown_hours = 1\n",
        &[("AFS_TRIGGER__COOLDOWN_HOURS", "-1")],
        &["trigger.cooldown_hours=3"],
    )
    .unwrap();
    assert_eq!(config.trigger.cooldown_hours, 3.0);
    assert!(parse_override("trigger.min_new_samples").is_err());
    assert!(parse_override("Trigger.x=1").is_err());
    assert!(parse_override("trigger..x=1").is_err());
    assert!(parse_override("loop.eval_cmd=a=b").is_ok_and(|o| o.value == "a=b"));
}

#[test]
fn only_section_variables_are_config_keys() {
    for name in [
        "AFS_DB",
        "AFS_NOW",
        "AFS_CONFIG",
        "AFS_TOKENS",
        "AFS_SLOW_TESTS",
        "OTHER__X",
    ] {
        assert!(!is_config_var(name), "{name}");
    }
    assert!(is_config_var("AFS_TRIGGER__MIN_NEW_SAMPLES"));
    assert_eq!(
        env_key("AFS_TRIGGER__PAGE_HINKLEY__ALPHA"),
        "trigger.page_hinkley.alpha"
    );
}

#[test]
fn retrain_is_the_old_name_of_trainer() {
    let config =
        parse_text("[retrain]\ntrain_cmd = \"old\"\n[trainer]\ntimeout_secs = 5\n").unwrap();
    assert_eq!(config.retrain.train_cmd.as_deref(), Some("old"));
    assert_eq!(config.retrain.timeout, Duration::from_secs(5));
    check_err(
        "[retrain]\ntrain_cmd = \"a\"\n[trainer]\ntrain_cmd = \"b\"\n",
        &["retrain.train_cmd and trainer.train_cmd are both set"],
    );
    check_err(
        "[trainer]\ntimeout_secs = 0",
        &["config file afs.toml: trainer.timeout_secs"],
    );
    // A variable of either name overrides a key of either section.
    let config = layered(
        "[retrain]\ntrain_cmd = \"old\"\n",
        &[("AFS_TRAINER__TRAIN_CMD", "new")],
        &[],
    )
    .unwrap();
    assert_eq!(config.retrain.train_cmd.as_deref(), Some("new"));
    let config = layered("", &[], &["retrain.min_samples_for_retrain=3"]).unwrap();
    assert_eq!(config.retrain.min_samples_for_retrain, 3);
}

#[test]
fn store_and_loop_keys_map_onto_their_fields() {
    let config = parse_text(
        r#"
[store]
busy_timeout_ms = 500
max_field_bytes = 2048
synchronous = "full"
pool_size = 2

[loop]
check_interval = 1800
enable_ab_testing = false
enable_auto_promotion = false
eval_cmd = "test -f {model_path}"
eval_timeout_secs = 60
champion = "nayru-v1"
champion_path = "/models/nayru-v1"
model_stem = "nayru"
training_window = "7d"
"#,
    )
    .unwrap();
    let crate::any_store::StoreConfig::Sqlite(sqlite) = config.store_config(Path::new("x.db"))
    else {
        panic!("a path names a SQLite file");
    };
    assert_eq!(sqlite.busy_timeout, Duration::from_millis(500));
    assert_eq!(sqlite.max_field_bytes, 2048);
    assert_eq!(sqlite.synchronous, afs_store_sqlite::Synchronous::Full);
    assert_eq!(sqlite.pool_size, 2);
    // The same settings reach a PostgreSQL store: the pool, the field limit, and the busy
    // timeout as its connect and pool wait.
    let crate::any_store::StoreConfig::Postgres(pg) =
        config.store_config(Path::new("postgres://afs@db.example/afs"))
    else {
        panic!("a postgres:// URL names a PostgreSQL database");
    };
    assert_eq!(pg.url, "postgres://afs@db.example/afs");
    assert_eq!(pg.connect_timeout, Duration::from_millis(500));
    assert_eq!(pg.max_field_bytes, 2048);
    assert_eq!(pg.pool_size, 2);
    // `synchronous = "full"` makes logging commit durably on PostgreSQL too.
    assert!(!pg.fast_log_commits);
    let l = config.loop_config();
    assert_eq!(l.check_interval, Duration::from_secs(1800));
    assert!(!l.enable_ab_testing);
    assert!(!l.enable_auto_promotion);
    assert_eq!(
        l.eval_gate,
        Some(afs_loop::EvalGate {
            command: "test -f {model_path}".into(),
            timeout: Duration::from_secs(60)
        })
    );
    let champion = l.initial_champion.as_ref().unwrap();
    assert_eq!(
        (champion.name.as_str(), champion.model_path.as_str()),
        ("nayru-v1", "/models/nayru-v1")
    );
    assert_eq!(l.model_stem.as_deref(), Some("nayru"));
    assert_eq!(l.training_window, Some(Duration::from_secs(7 * 86_400)));
    assert!(config.check_loop(&l).is_ok());

    let check = |text: &str, key: &str| check_err(text, &["config file afs.toml: ", key]);
    check("[store]\nmax_field_bytes = 10", "store.max_field_bytes: 10");
    check(
        "[store]\nbusy_timeout_ms = 99999999",
        "store.busy_timeout_ms",
    );
    check_err(
        "[loop]\ncheck_interval = 0",
        &[
            "line 2",
            "loop.check_interval",
            "integer `0`",
            "a duration > 0",
        ],
    );
    check_err(
        "[loop]\ntraining_window = \"-1h\"",
        &["line 2", "loop.training_window"],
    );
    check("[loop]\neval_cmd = \"\"", "loop.eval_cmd");
    check("[loop]\neval_timeout_secs = 0", "loop.eval_timeout_secs");
    check(
        "[loop]\nchampion = \"a\"",
        "loop.champion: needs loop.champion_path",
    );
    check("[loop]\nchampion_path = \"/m\"", "loop.champion_path");
    check("[loop]\nmodel_stem = \"a b\"", "loop.model_stem");
    check_err(
        "[store]\nsynchronous = \"off\"",
        &["line 2", "store.synchronous", "normal", "full"],
    );
    check_err("[loop]\nbogus = 1", &["line 2", "unknown key loop.bogus"]);

    // The loop's own check names the key and its source: rehearsal without a file is
    // allowed for `afs generate` (a flag may give the file) but not for the loop.
    let config = layered("", &[("AFS_GENERATOR__REHEARSAL_RATIO", "0.2")], &[]).unwrap();
    let err = config.check_loop(&config.loop_config()).unwrap_err().0;
    assert!(
        err.contains("environment variable AFS_GENERATOR__REHEARSAL_RATIO: generator."),
        "{err}"
    );
}

#[test]
fn the_shown_configuration_reads_back_to_itself() {
    let check = |config: &Config| {
        let text = to_toml(config).unwrap();
        let again = parse_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again.trigger, config.trigger, "{text}");
        assert_eq!(again.generator, config.generator, "{text}");
        assert_eq!(again.near_dedupe, config.near_dedupe, "{text}");
        assert_eq!(again.abtest, config.abtest, "{text}");
        assert_eq!(again.store, config.store, "{text}");
        assert_eq!(again.loop_settings, config.loop_settings, "{text}");
        assert_eq!(again.retrain.train_cmd, config.retrain.train_cmd, "{text}");
        assert_eq!(again.retrain.timeout, config.retrain.timeout, "{text}");
        assert_eq!(again.retrain, config.retrain, "{text}");
        let serve = crate::config::ServeSettings {
            tokens: Vec::new(),
            ..config.serve.clone()
        };
        assert_eq!(again.serve, serve, "{text}");
        let json = to_json(config);
        assert_eq!(
            json["trigger"]["min_new_samples"],
            config.trigger.min_new_samples
        );
    };
    check(&Config::default());
    check(&parse_text(include_str!("../../../../afs.example.toml")).unwrap());
    let config = layered(
        "[generator]\nmin_user_feedback = \"none\"\nnear_dedupe = true\nmax_samples = 5\n\
         [abtest]\nenable_bandit = true\nprimary_metric = \"positive_rate\"\n\
         ratio_metrics = [\"latency_ms\", \"quality\"]\ncuped = false\n\
         feedback_maturity_hours = 12\n\
         [abtest.guardrails]\nquality = 0.2\n[loop]\ntraining_window = 5400\n\
         champion = \"m\"\nchampion_path = \"/m\"\n[trainer]\ntrain_cmd = \"./train.sh {data}\"\n",
        &[("AFS_STORE__BUSY_TIMEOUT_MS", "250")],
        &["loop.check_interval=45s"],
    )
    .unwrap();
    check(&config);
    let text = to_toml(&config).unwrap();
    assert!(text.contains("#   file afs.toml\n#   environment AFS_STORE__BUSY_TIMEOUT_MS\n#   --set loop.check_interval\n"), "{text}");
    assert!(text.contains("check_interval = \"45s\""), "{text}");
    assert!(text.contains("training_window = \"90m\""), "{text}");
}

#[test]
fn the_serve_section_is_layered_and_checked() {
    let defaults = Config::default().serve;
    assert_eq!(defaults.addr.to_string(), "127.0.0.1:8080");
    assert_eq!(parse_text(EXAMPLE).unwrap().serve, defaults);

    let text = "[serve]\naddr = \"0.0.0.0:9000\"\ntokens = [\"alpha\", \"beta\"]\n\
                token_file = \"secrets/tokens\"\nprotect_reads = true\nmax_body_bytes = 4096\n\
                max_batch = 7\nshutdown_timeout_secs = 5\nwith_loop = true\n";
    let in_dir = |text: &str| {
        parse(text, Path::new("/etc/afs/afs.toml"))
            .map_err(|e| e.0)
            .unwrap()
    };
    let config = in_dir(text);
    let s = &config.serve;
    assert_eq!(s.addr.to_string(), "0.0.0.0:9000");
    assert_eq!(s.tokens, ["alpha", "beta"]);
    assert_eq!(
        s.token_file.as_deref(),
        Some(Path::new("/etc/afs/secrets/tokens")),
        "relative to the file's directory"
    );
    assert!(s.protect_reads && s.with_loop);
    assert_eq!((s.max_body_bytes, s.max_batch), (4096, 7));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(5));

    // The environment over the file, --set over both; a list is comma-separated as text.
    let config = layered(
        text,
        &[
            ("AFS_SERVE__TOKENS", "gamma,delta"),
            ("AFS_SERVE__MAX_BATCH", "8"),
            ("AFS_SERVE__WITH_LOOP", "false"),
        ],
        &["serve.max_batch=9", "serve.addr=127.0.0.1:0"],
    )
    .unwrap();
    assert_eq!(config.serve.tokens, ["gamma", "delta"]);
    assert_eq!(config.serve.max_batch, 9);
    assert!(!config.serve.with_loop);
    assert_eq!(config.serve.addr.to_string(), "127.0.0.1:0");
    assert_eq!(
        config.key_name("serve.tokens"),
        "serve.tokens (from AFS_SERVE__TOKENS)"
    );

    // Empty tokens and bad values name the key and where it came from.
    check_err(
        "[serve]\ntokens = [\"ok\", \"\"]",
        &[
            "config file afs.toml: serve.tokens",
            "token 2 of 2 is empty",
        ],
    );
    check_err("[serve]\ntokens = [1]", &["serve.tokens"]);
    check_layered_err(
        "",
        &[("AFS_SERVE__TOKENS", "a,,b")],
        &[],
        &[
            "environment variable AFS_SERVE__TOKENS: serve.tokens",
            "empty",
        ],
    );
    check_layered_err(
        "",
        &[],
        &["serve.tokens="],
        &["--set serve.tokens", "empty"],
    );
    check_err("[serve]\ntoken_file = \"\"", &["serve.token_file", "empty"]);
    check_err(
        "[serve]\naddr = \"localhost\"",
        &["serve.addr", "HOST:PORT"],
    );
    check_err("[serve]\nmax_batch = 0", &["serve.max_batch", "at least 1"]);
    check_err(
        "[serve]\nmax_body_bytes = 0",
        &["serve.max_body_bytes", "at least 1"],
    );
    check_err(
        "[serve]\nprotect_reads = \"yes please\"",
        &["line 2", "serve.protect_reads"],
    );
    check_err(
        "[serve]\ntoken = \"x\"",
        &["line 2", "unknown key serve.token"],
    );
}

#[test]
fn the_serve_guard_and_connection_keys_are_layered_and_checked() {
    let defaults = Config::default().serve;
    assert!(defaults.allowed_hosts.is_empty() && defaults.allowed_origins.is_empty());
    assert_eq!(defaults.max_connections, 1024);
    assert_eq!(defaults.header_timeout, Duration::from_secs(10));
    assert_eq!(defaults.body_timeout, Duration::from_secs(30));
    assert_eq!(defaults.write_timeout, Duration::from_secs(30));

    let text = "[serve]\nallowed_hosts = [\"AFS.example.com\", \"::1\"]\n\
                allowed_origins = [\"https://Dash.example.com:443\"]\nmax_connections = 8\n\
                header_timeout_secs = 2\nbody_timeout_secs = 3\nwrite_timeout_secs = 4\n";
    let s = parse_text(text).unwrap().serve;
    assert_eq!(s.allowed_hosts, ["afs.example.com", "[::1]"], "normalised");
    assert_eq!(s.allowed_origins, ["https://dash.example.com"]);
    assert_eq!(s.max_connections, 8);
    assert_eq!(s.header_timeout, Duration::from_secs(2));
    assert_eq!(s.body_timeout, Duration::from_secs(3));
    assert_eq!(s.write_timeout, Duration::from_secs(4));

    let config = layered(
        text,
        &[("AFS_SERVE__ALLOWED_HOSTS", "a.example, b.example")],
        &[
            "serve.allowed_origins=http://localhost:3000",
            "serve.max_connections=9",
        ],
    )
    .unwrap();
    assert_eq!(config.serve.allowed_hosts, ["a.example", "b.example"]);
    assert_eq!(config.serve.allowed_origins, ["http://localhost:3000"]);
    assert_eq!(config.serve.max_connections, 9);

    check_err(
        "[serve]\nallowed_hosts = [\"afs.example.com:8080\"]",
        &["serve.allowed_hosts", "no scheme, port or path"],
    );
    check_err(
        "[serve]\nallowed_origins = [\"afs.example.com\"]",
        &["serve.allowed_origins", "not an origin"],
    );
    check_err(
        "[serve]\nmax_connections = 0",
        &["serve.max_connections", "1..=1000000"],
    );
    check_err(
        "[serve]\nheader_timeout_secs = 0",
        &["serve.header_timeout_secs", "at least 1"],
    );
    check_err(
        "[serve]\nbody_timeout_secs = 0",
        &["serve.body_timeout_secs", "at least 1"],
    );
}

#[test]
fn serve_tokens_come_from_the_key_and_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens"),
        "# the servers\nfile-one\n\n  file-two  \n",
    )
    .unwrap();
    let config_path = dir.path().join("afs.toml");
    let config = parse(
        "[serve]\ntokens = [\"inline\"]\ntoken_file = \"tokens\"\n",
        &config_path,
    )
    .unwrap();
    assert_eq!(
        config.serve_tokens().unwrap(),
        ["inline", "file-one", "file-two"]
    );
    std::fs::write(dir.path().join("empty"), "# nothing\n\n").unwrap();
    let config = parse("[serve]\ntoken_file = \"empty\"\n", &config_path).unwrap();
    let err = config.serve_tokens().unwrap_err().to_string();
    assert!(
        err.contains("serve.token_file in") && err.contains("no token"),
        "{err}"
    );
    let config = parse("[serve]\ntoken_file = \"missing\"\n", &config_path).unwrap();
    let err = format!("{:#}", config.serve_tokens().unwrap_err());
    assert!(
        err.contains("serve.token_file in") && err.contains("cannot read"),
        "{err}"
    );

    // `afs config show` never prints the tokens.
    let config = parse("[serve]\ntokens = [\"s3cret\"]\n", &config_path).unwrap();
    let text = to_toml(&config).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("1 token(s) set, not shown"), "{text}");
    assert!(
        text.contains("[serve]\naddr = \"127.0.0.1:8080\""),
        "{text}"
    );
}
