//! The effective configuration written out (`afs config show`): every key of every section
//! with its value, in the file's own format, so the output is itself a valid config file.
//!
//! `[store]` and `[trigger]` are the libraries' configs serialised as they are (their serde
//! keys are the file's); the other sections are still mirrored here.

use afs_abtest::{Metric, PrimaryMetric};
use afs_store_sqlite::SqliteConfig;
use afs_trigger::TriggerConfig;
use serde::{Serialize, Serializer};

use super::Config;
use crate::time_arg::format_duration;

#[derive(Serialize)]
struct Shown<'a> {
    store: &'a SqliteConfig,
    trigger: &'a TriggerConfig,
    generator: ShownGenerator,
    abtest: ShownAbTest,
    #[serde(rename = "loop")]
    looping: ShownLoop,
    trainer: ShownTrainer,
    serve: ShownServe,
}

/// `[serve]`. The tokens themselves are secrets and never shown: `to_toml` says in a
/// comment how many are set.
#[derive(Serialize)]
struct ShownServe {
    addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
    protect_reads: bool,
    max_body_bytes: usize,
    max_batch: usize,
    shutdown_timeout_secs: u64,
    with_loop: bool,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    max_connections: usize,
    header_timeout_secs: u64,
    body_timeout_secs: u64,
    write_timeout_secs: u64,
}

#[derive(Serialize)]
struct ShownGenerator {
    min_quality_score: f64,
    min_user_feedback: Feedback,
    deduplicate: bool,
    near_dedupe: bool,
    near_dedupe_threshold: f64,
    format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_samples: Option<u64>,
    redact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    existing: Option<String>,
    rehearsal_ratio: f64,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shape: Option<&'static str>,
    metadata: bool,
    write_back_scores: bool,
}

/// `min_user_feedback`: an integer, or `"none"`.
struct Feedback(Option<i64>);

impl Serialize for Feedback {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(n) => serializer.serialize_i64(n),
            None => serializer.serialize_str("none"),
        }
    }
}

#[derive(Serialize)]
struct ShownAbTest {
    initial_challenger_traffic: f64,
    min_samples_per_version: u64,
    min_improvement_threshold: f64,
    enable_auto_promotion: bool,
    promotion_threshold: f64,
    min_duration_hours: f64,
    primary_metric: &'static str,
    alpha: f64,
    min_lift: f64,
    expected_effect: f64,
    min_feedback_per_version: u64,
    enable_auto_rollback: bool,
    srm_p_threshold: f64,
    srm_min_deviation: f64,
    check_interval_hours: f64,
    enable_bandit: bool,
    min_units_per_arm: u64,
    ratio_metrics: Vec<&'static str>,
    cuped: bool,
    cuped_lookback_days: f64,
    feedback_maturity_hours: f64,
    guardrails: ShownGuardrails,
    bandit: ShownBandit,
}

#[derive(Serialize)]
struct ShownGuardrails {
    latency_ms: Margin,
    negative_rate: Margin,
    positive_rate: Margin,
    quality: Margin,
}

/// A guardrail: its margin, or `false`.
struct Margin(Option<f64>);

impl Serialize for Margin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(margin) => serializer.serialize_f64(margin),
            None => serializer.serialize_bool(false),
        }
    }
}

#[derive(Serialize)]
struct ShownBandit {
    arm_floor: f64,
    champion_floor: f64,
    draws: u32,
}

#[derive(Serialize)]
struct ShownLoop {
    check_interval: String,
    enable_ab_testing: bool,
    enable_auto_promotion: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_cmd: Option<String>,
    eval_timeout_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    champion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    champion_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_stem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    training_window: Option<String>,
}

#[derive(Serialize)]
struct ShownTrainer {
    #[serde(skip_serializing_if = "Option::is_none")]
    train_cmd: Option<String>,
    timeout_secs: u64,
    min_samples_for_retrain: u64,
    output_dir: String,
    dataset_name: String,
}

fn shown(config: &Config) -> Shown<'_> {
    let g = &config.generator;
    let a = &config.abtest;
    let l = &config.loop_settings;
    let r = &config.retrain;
    let margin = |metric: Metric| {
        Margin(
            a.guardrails
                .iter()
                .find(|guardrail| guardrail.metric == metric)
                .map(|guardrail| guardrail.margin),
        )
    };
    let bandit = a.bandit.unwrap_or_default();
    Shown {
        store: &config.store,
        trigger: &config.trigger,
        generator: ShownGenerator {
            min_quality_score: g.min_quality_score,
            min_user_feedback: Feedback(g.min_user_feedback),
            deduplicate: g.deduplicate,
            near_dedupe: g.near_dedupe.is_some(),
            near_dedupe_threshold: config.near_dedupe.threshold,
            format: g.format.as_str(),
            max_samples: g.max_samples,
            redact: g.redact,
            existing: g.existing.as_ref().map(|p| p.display().to_string()),
            rehearsal_ratio: g.rehearsal_ratio,
            seed: g.seed,
            model: g.model.clone(),
            system_prompt: g.system_prompt.clone(),
            shape: g.shape.map(|s| s.as_str()),
            metadata: g.metadata,
            write_back_scores: g.write_back_scores,
        },
        abtest: ShownAbTest {
            initial_challenger_traffic: a.initial_challenger_traffic,
            min_samples_per_version: a.min_samples_per_version,
            min_improvement_threshold: a.min_improvement_threshold,
            enable_auto_promotion: a.enable_auto_promotion,
            promotion_threshold: a.promotion_threshold,
            min_duration_hours: a.min_duration_hours,
            primary_metric: match a.primary_metric {
                PrimaryMetric::Quality => "quality",
                PrimaryMetric::PositiveRate => "positive_rate",
            },
            alpha: a.alpha,
            min_lift: a.min_lift,
            expected_effect: a.expected_effect,
            min_feedback_per_version: a.min_feedback_per_version,
            enable_auto_rollback: a.enable_auto_rollback,
            srm_p_threshold: a.srm_p_threshold,
            srm_min_deviation: a.srm_min_deviation,
            check_interval_hours: a.check_interval_hours,
            enable_bandit: a.bandit.is_some(),
            min_units_per_arm: a.min_units_per_arm,
            ratio_metrics: a.ratio_metrics.iter().map(|m| m.key()).collect(),
            cuped: a.cuped,
            cuped_lookback_days: a.cuped_lookback_days,
            feedback_maturity_hours: a.feedback_maturity_hours,
            guardrails: ShownGuardrails {
                latency_ms: margin(Metric::Latency),
                negative_rate: margin(Metric::NegativeRate),
                positive_rate: margin(Metric::PositiveRate),
                quality: margin(Metric::Quality),
            },
            bandit: ShownBandit {
                arm_floor: bandit.arm_floor,
                champion_floor: bandit.champion_floor,
                draws: bandit.draws,
            },
        },
        looping: ShownLoop {
            check_interval: format_duration(l.check_interval),
            enable_ab_testing: l.enable_ab_testing,
            enable_auto_promotion: l.enable_auto_promotion,
            eval_cmd: l.eval_cmd.clone(),
            eval_timeout_secs: l.eval_timeout.as_secs(),
            champion: l.champion.clone(),
            champion_path: l.champion_path.clone(),
            model_stem: l.model_stem.clone(),
            training_window: l.training_window.map(format_duration),
        },
        trainer: ShownTrainer {
            train_cmd: r.train_cmd.clone(),
            timeout_secs: r.timeout.as_secs(),
            min_samples_for_retrain: r.retrainer.min_samples_for_retrain,
            output_dir: r.retrainer.output_dir.display().to_string(),
            dataset_name: r.retrainer.dataset_name.clone(),
        },
        serve: ShownServe {
            addr: config.serve.addr.to_string(),
            token_file: config
                .serve
                .token_file
                .as_ref()
                .map(|p| p.display().to_string()),
            protect_reads: config.serve.protect_reads,
            max_body_bytes: config.serve.max_body_bytes,
            max_batch: config.serve.max_batch,
            shutdown_timeout_secs: config.serve.shutdown_timeout.as_secs(),
            with_loop: config.serve.with_loop,
            allowed_hosts: config.serve.allowed_hosts.clone(),
            allowed_origins: config.serve.allowed_origins.clone(),
            max_connections: config.serve.max_connections,
            header_timeout_secs: config.serve.header_timeout.as_secs(),
            body_timeout_secs: config.serve.body_timeout.as_secs(),
            write_timeout_secs: config.serve.write_timeout.as_secs(),
        },
    }
}

/// The effective configuration as a config file: a comment naming the layers it was built
/// from, then every section. Keys without a value (no default, not set) are left out.
pub(crate) fn to_toml(config: &Config) -> anyhow::Result<String> {
    let mut text = String::from(
        "# The effective afs configuration: defaults, then the layers below (a later one wins).\n",
    );
    let layers = config.sources.describe();
    if layers.is_empty() {
        text.push_str("# No config file, environment variable or --set flag: all defaults.\n");
    }
    for layer in layers {
        text.push_str(&format!("#   {layer}\n"));
    }
    let n_tokens = config.serve.tokens.len();
    if n_tokens > 0 {
        text.push_str(&format!(
            "# serve.tokens: {n_tokens} token(s) set, not shown (they are secrets).\n"
        ));
    }
    text.push('\n');
    text.push_str(&toml::to_string(&shown(config))?);
    Ok(text)
}

/// The effective configuration as JSON: the same sections and keys as [`to_toml`].
pub(crate) fn to_json(config: &Config) -> serde_json::Value {
    serde_json::to_value(shown(config)).unwrap_or(serde_json::Value::Null)
}
