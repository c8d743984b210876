//! The config file's schema, section by section (the serde structs every layer is read
//! into), and its mapping onto the libraries' configs with range checks naming the key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use afs_abtest::{AbTestConfig, AbTestError, BanditConfig, Guardrail, Metric, PrimaryMetric};
use afs_datagen::{DatagenError, Format, GeneratorConfig, Shape};
use afs_store::StoreError;
use afs_store_sqlite::SqliteConfig;
use afs_trigger::{TriggerConfig, TriggerError};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use super::{Config, LoopSettings, ServeSettings, Sources};
use crate::time_arg::{duration_from_secs, parse_duration};

/// A key with a value out of range.
pub(super) struct KeyError {
    /// Dotted key path, e.g. `trigger.page_hinkley.alpha`.
    pub(super) key: String,
    /// Why it is refused.
    pub(super) reason: String,
}

impl KeyError {
    pub(super) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        KeyError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole file, and what each environment variable and `--set` flag is read into. Every
/// key is optional: an absent key keeps the default.
///
/// `[store]` and `[trigger]` are the libraries' own configs ([`SqliteConfig`],
/// [`TriggerConfig`]), declared once with their serde keys and defaults; the other sections
/// are still mirrored here and mapped onto the libraries' configs by [`FileConfig::into_config`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    store: SqliteConfig,
    #[serde(default)]
    trigger: TriggerConfig,
    #[serde(default)]
    generator: GeneratorSection,
    #[serde(default)]
    abtest: AbTestSection,
    #[serde(default, rename = "loop")]
    looping: LoopSection,
    #[serde(default)]
    trainer: TrainerSection,
    /// The old name of `[trainer]`. It is folded into `trainer` before the layers are
    /// merged (see `super::fold_legacy`), so after that it is always empty.
    #[serde(default)]
    retrain: TrainerSection,
    #[serde(default)]
    serve: ServeSection,
}

/// `[serve]`: the settings of `afs serve` (its flags, `AFS_ADDR` and `AFS_TOKENS` override
/// these).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeSection {
    addr: Option<String>,
    tokens: Option<TokensSetting>,
    token_file: Option<PathBuf>,
    protect_reads: Option<bool>,
    max_body_bytes: Option<u64>,
    max_batch: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    with_loop: Option<bool>,
    allowed_hosts: Option<TokensSetting>,
    allowed_origins: Option<TokensSetting>,
    max_connections: Option<u64>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
}

/// `serve.tokens` (and the other lists of `[serve]`: `allowed_hosts`, `allowed_origins`):
/// an array of strings in a file, or a comma-separated list in an environment variable or
/// `--set` (as `AFS_TOKENS`).
#[derive(Debug, Clone, PartialEq)]
struct TokensSetting(Vec<String>);

impl<'de> Deserialize<'de> for TokensSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TokensVisitor;

        impl<'de> Visitor<'de> for TokensVisitor {
            type Value = TokensSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings (or, as text, a comma-separated list)")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut tokens = Vec::new();
                while let Some(token) = seq.next_element::<String>()? {
                    tokens.push(token);
                }
                Ok(TokensSetting(tokens))
            }

            // Environment variables and `--set` give text. Empty parts are kept, so that
            // they are refused with the key named.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TokensSetting(
                    v.split(',').map(|t| t.trim().to_string()).collect(),
                ))
            }
        }

        deserializer.deserialize_any(TokensVisitor)
    }
}

/// `[generator]`: the file-level fields of [`GeneratorConfig`]. The per-run filters
/// (`since`, `until`) are flags of `afs generate` only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneratorSection {
    min_quality_score: Option<f64>,
    min_user_feedback: Option<FeedbackSetting>,
    deduplicate: Option<bool>,
    near_dedupe: Option<bool>,
    near_dedupe_threshold: Option<f64>,
    format: Option<String>,
    max_samples: Option<u64>,
    redact: Option<bool>,
    existing: Option<PathBuf>,
    rehearsal_ratio: Option<f64>,
    seed: Option<u64>,
    model: Option<String>,
    system_prompt: Option<String>,
    shape: Option<String>,
    metadata: Option<bool>,
    write_back_scores: Option<bool>,
}

/// `[trainer]` (and its old name `[retrain]`): the trainer command and [`RetrainerConfig`].
///
/// [`RetrainerConfig`]: afs_trigger::RetrainerConfig
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainerSection {
    train_cmd: Option<String>,
    timeout_secs: Option<u64>,
    min_samples_for_retrain: Option<u64>,
    output_dir: Option<PathBuf>,
    dataset_name: Option<String>,
}

impl TrainerSection {
    /// Each key of `self`, or else of `other`.
    fn or(self, other: TrainerSection) -> TrainerSection {
        TrainerSection {
            train_cmd: self.train_cmd.or(other.train_cmd),
            timeout_secs: self.timeout_secs.or(other.timeout_secs),
            min_samples_for_retrain: self
                .min_samples_for_retrain
                .or(other.min_samples_for_retrain),
            output_dir: self.output_dir.or(other.output_dir),
            dataset_name: self.dataset_name.or(other.dataset_name),
        }
    }
}

/// `[loop]`: the continuous loop's own settings (the seed's `LoopConfig` names where they
/// exist; `check_interval` is the seed's `check_interval_seconds`, also written `30m`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopSection {
    check_interval: Option<DurationSetting>,
    enable_ab_testing: Option<bool>,
    enable_auto_promotion: Option<bool>,
    eval_cmd: Option<String>,
    eval_timeout_secs: Option<u64>,
    champion: Option<String>,
    champion_path: Option<String>,
    model_stem: Option<String>,
    training_window: Option<DurationSetting>,
}

/// `[abtest]`: the fields of [`AbTestConfig`] by their names, with the bandit switched on by
/// `enable_bandit` (as `trigger.enable_page_hinkley` switches its detector).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbTestSection {
    initial_challenger_traffic: Option<f64>,
    min_samples_per_version: Option<u64>,
    min_improvement_threshold: Option<f64>,
    enable_auto_promotion: Option<bool>,
    promotion_threshold: Option<f64>,
    min_duration_hours: Option<f64>,
    primary_metric: Option<PrimaryMetricSetting>,
    alpha: Option<f64>,
    min_lift: Option<f64>,
    expected_effect: Option<f64>,
    min_feedback_per_version: Option<u64>,
    enable_auto_rollback: Option<bool>,
    srm_p_threshold: Option<f64>,
    srm_min_deviation: Option<f64>,
    check_interval_hours: Option<f64>,
    enable_bandit: Option<bool>,
    min_units_per_arm: Option<u64>,
    ratio_metrics: Option<MetricsSetting>,
    cuped: Option<bool>,
    cuped_lookback_days: Option<f64>,
    feedback_maturity_hours: Option<f64>,
    guardrails: Option<GuardrailsSection>,
    bandit: Option<BanditSection>,
}

/// A metric by its report key ([`Metric::key`]), in `abtest.ratio_metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MetricSetting {
    Quality,
    PositiveRate,
    NegativeRate,
    LatencyMs,
}

impl MetricSetting {
    fn metric(self) -> Metric {
        match self {
            MetricSetting::Quality => Metric::Quality,
            MetricSetting::PositiveRate => Metric::PositiveRate,
            MetricSetting::NegativeRate => Metric::NegativeRate,
            MetricSetting::LatencyMs => Metric::Latency,
        }
    }
}

/// `abtest.ratio_metrics`: an array of metric keys in a file, or a comma-separated list in
/// an environment variable or `--set` (empty text for none). An unknown key is refused with
/// the allowed ones named.
#[derive(Debug, Clone, PartialEq)]
struct MetricsSetting(Vec<MetricSetting>);

impl<'de> Deserialize<'de> for MetricsSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetricsVisitor;

        impl<'de> Visitor<'de> for MetricsVisitor {
            type Value = MetricsSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an array of metric keys (quality, positive_rate, negative_rate, \
                     latency_ms; or, as text, a comma-separated list)",
                )
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut metrics = Vec::new();
                while let Some(metric) = seq.next_element::<MetricSetting>()? {
                    metrics.push(metric);
                }
                Ok(MetricsSetting(metrics))
            }

            // Environment variables and `--set` give text.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.trim().is_empty() {
                    return Ok(MetricsSetting(Vec::new()));
                }
                v.split(',')
                    .map(|part| {
                        MetricSetting::deserialize(de::value::StrDeserializer::<E>::new(
                            part.trim(),
                        ))
                    })
                    .collect::<Result<_, _>>()
                    .map(MetricsSetting)
            }
        }

        deserializer.deserialize_any(MetricsVisitor)
    }
}

/// `abtest.primary_metric`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PrimaryMetricSetting {
    Quality,
    PositiveRate,
}

/// `[abtest.guardrails]`: one key per metric (by its report key), each a margin or `false`.
/// A metric left out keeps its default (latency and negative-feedback rate at 10%, the
/// others off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardrailsSection {
    latency_ms: Option<GuardrailSetting>,
    negative_rate: Option<GuardrailSetting>,
    positive_rate: Option<GuardrailSetting>,
    quality: Option<GuardrailSetting>,
}

/// A guardrail's setting: the tolerated relative harm (`0.1` = 10% worse), or `false` for
/// no guardrail on that metric.
#[derive(Debug, Clone, Copy, PartialEq)]
enum GuardrailSetting {
    Margin(f64),
    Off,
}

impl<'de> Deserialize<'de> for GuardrailSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GuardrailVisitor;

        impl Visitor<'_> for GuardrailVisitor {
            type Value = GuardrailSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a margin > 0 (0.1 = 10% worse) or false")
            }

            // The range is checked after parsing, with the key named.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(GuardrailSetting::Margin(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(GuardrailSetting::Margin(v as f64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(GuardrailSetting::Margin(v as f64))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                if v {
                    Err(E::invalid_value(Unexpected::Bool(v), &self))
                } else {
                    Ok(GuardrailSetting::Off)
                }
            }

            // Environment variables and `--set` give text.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v.trim() {
                    "false" => Ok(GuardrailSetting::Off),
                    text => text
                        .parse::<f64>()
                        .map(GuardrailSetting::Margin)
                        .map_err(|_| E::invalid_value(Unexpected::Str(v), &self)),
                }
            }
        }

        deserializer.deserialize_any(GuardrailVisitor)
    }
}

/// `[abtest.bandit]`: the fields of [`BanditConfig`], used when `abtest.enable_bandit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanditSection {
    arm_floor: Option<f64>,
    champion_floor: Option<f64>,
    draws: Option<u32>,
}

/// `generator.min_user_feedback`: an integer (-1, 0 or 1: the minimum feedback a record
/// needs) or the string `"none"` (no feedback condition; records without feedback pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedbackSetting {
    AtLeast(i64),
    NoCondition,
}

impl<'de> Deserialize<'de> for FeedbackSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FeedbackVisitor;

        impl Visitor<'_> for FeedbackVisitor {
            type Value = FeedbackSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("-1, 0, 1 or \"none\"")
            }

            // The range is checked by `GeneratorConfig::validate`, which names the key.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(FeedbackSetting::AtLeast(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(FeedbackSetting::AtLeast)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }

            // "none" in a file; an environment variable or `--set` also gives "-1" as text.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "none" {
                    return Ok(FeedbackSetting::NoCondition);
                }
                v.trim()
                    .parse::<i64>()
                    .map(FeedbackSetting::AtLeast)
                    .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }

        deserializer.deserialize_any(FeedbackVisitor)
    }
}

/// A duration: a number of seconds, or text such as `"30m"`, `"1h"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DurationSetting(Duration);

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl DurationVisitor {
            fn secs<E: de::Error>(
                self,
                secs: f64,
                given: Unexpected<'_>,
            ) -> Result<DurationSetting, E> {
                duration_from_secs(secs)
                    .map(DurationSetting)
                    .map_err(|_| E::invalid_value(given, &self))
            }
        }

        impl Visitor<'_> for DurationVisitor {
            type Value = DurationSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration > 0: seconds, or text such as \"90s\", \"30m\", \"1h\", \"7d\"",
                )
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                self.secs(v, Unexpected::Float(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.secs(v as f64, Unexpected::Signed(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.secs(v as f64, Unexpected::Unsigned(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v)
                    .map(DurationSetting)
                    .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Copies each `Some` field of `$from` onto the field of the same name of `$to`.
macro_rules! set_present {
    ($from:expr => $to:expr; $($field:ident),* $(,)?) => {
        $( if let Some(value) = $from.$field { $to.$field = value; } )*
    };
}

impl FileConfig {
    /// The settings of these merged layers; `sources` says where each key came from (a
    /// relative path from the file is relative to the file's directory).
    pub(super) fn into_config(self, sources: &Sources) -> Result<Config, KeyError> {
        let base = sources
            .file
            .as_deref()
            .and_then(Path::parent)
            .filter(|dir| !dir.as_os_str().is_empty() && *dir != Path::new("."));
        let resolve = |key: &str, p: PathBuf| match base {
            Some(base) if p.is_relative() && sources.set_by_file(key) => base.join(p),
            _ => p,
        };
        let mut config = Config {
            sources: sources.clone(),
            ..Config::default()
        };

        self.store.validate().map_err(|err| match err {
            StoreError::InvalidInput { field, reason } => {
                KeyError::new(format!("store.{field}"), reason)
            }
            other => KeyError::new("store", other.to_string()),
        })?;
        config.store = self.store;

        config.trigger = self.trigger;
        config.trigger.validate().map_err(|err| match err {
            TriggerError::Config { field, reason } => {
                KeyError::new(format!("trigger.{field}"), reason)
            }
            other => KeyError::new("trigger", other.to_string()),
        })?;

        let g = self.generator;
        let generator = &mut config.generator;
        set_present!(g => generator;
            min_quality_score, deduplicate, redact, rehearsal_ratio,
            seed, write_back_scores, metadata,
        );
        if let Some(feedback) = g.min_user_feedback {
            generator.min_user_feedback = match feedback {
                FeedbackSetting::AtLeast(n) => Some(n),
                FeedbackSetting::NoCondition => None,
            };
        }
        if let Some(name) = &g.format {
            generator.format = name
                .parse::<Format>()
                .map_err(|err| KeyError::new("generator.format", err.to_string()))?;
        }
        if let Some(name) = &g.shape {
            generator.shape = Some(
                name.parse::<Shape>()
                    .map_err(|reason| KeyError::new("generator.shape", reason))?,
            );
        }
        generator.max_samples = g.max_samples.or(generator.max_samples);
        generator.existing = g
            .existing
            .map(|p| resolve("generator.existing", p))
            .or(generator.existing.take());
        generator.model = g.model.or(generator.model.take());
        generator.system_prompt = g.system_prompt.or(generator.system_prompt.take());
        if let Some(threshold) = g.near_dedupe_threshold {
            config.near_dedupe.threshold = threshold;
        }
        if g.near_dedupe == Some(true) {
            generator.near_dedupe = Some(config.near_dedupe.clone());
        }
        // Validate with near-dedupe on, so that a bad threshold is reported even while
        // near-dedupe is off (a flag may turn it on), and with a stand-in existing file when
        // none is set: `afs generate --existing FILE` may supply the file that
        // `rehearsal_ratio` needs, and the command checks that combination itself.
        // The shape is checked against the format only when this layer sets the format as
        // well: `--format` may choose one that has the shape.
        let probe = GeneratorConfig {
            near_dedupe: Some(config.near_dedupe.clone()),
            shape: generator.shape.filter(|_| g.format.is_some()),
            existing: generator
                .existing
                .clone()
                .or_else(|| Some(PathBuf::from("(given by a flag)"))),
            ..generator.clone()
        };
        probe.validate().map_err(|err| match err {
            DatagenError::InvalidConfig { field, reason } => {
                KeyError::new(generator_key(field), reason)
            }
            other => KeyError::new("generator", other.to_string()),
        })?;

        let r = self.trainer.or(self.retrain);
        let retrain = &mut config.retrain;
        if let Some(cmd) = r.train_cmd {
            if cmd.trim().is_empty() {
                return Err(KeyError::new("trainer.train_cmd", "must not be empty"));
            }
            retrain.train_cmd = Some(cmd);
        }
        if let Some(secs) = r.timeout_secs {
            if secs == 0 {
                return Err(KeyError::new("trainer.timeout_secs", "must be at least 1"));
            }
            retrain.timeout = Duration::from_secs(secs);
        }
        if let Some(n) = r.min_samples_for_retrain {
            if n == 0 {
                return Err(KeyError::new(
                    "trainer.min_samples_for_retrain",
                    "must be at least 1",
                ));
            }
            retrain.retrainer.min_samples_for_retrain = n;
        }
        if let Some(dir) = r.output_dir {
            if dir.as_os_str().is_empty() {
                return Err(KeyError::new("trainer.output_dir", "must not be empty"));
            }
            retrain.retrainer.output_dir = resolve("trainer.output_dir", dir);
        } else if let Some(base) = base {
            retrain.retrainer.output_dir = base.join(&retrain.retrainer.output_dir);
        }
        if let Some(name) = r.dataset_name {
            check_file_name(&name)
                .map_err(|reason| KeyError::new("trainer.dataset_name", reason))?;
            retrain.retrainer.dataset_name = name;
        }

        config.abtest = self.abtest.into_config()?;
        config.loop_settings = self.looping.into_settings()?;

        config.serve = self.serve.into_settings()?;
        config.serve.token_file = config
            .serve
            .token_file
            .take()
            .map(|p| resolve("serve.token_file", p));
        Ok(config)
    }
}

impl ServeSection {
    /// The service settings of `[serve]`, validated (`token_file` as written; the caller
    /// resolves it against the file's directory, and `afs serve` reads it).
    fn into_settings(self) -> Result<ServeSettings, KeyError> {
        let mut serve = ServeSettings::default();
        if let Some(addr) = self.addr {
            serve.addr = addr.trim().parse().map_err(|_| {
                KeyError::new(
                    "serve.addr",
                    format!("{addr:?} is not HOST:PORT with an IP address (e.g. 127.0.0.1:8080)"),
                )
            })?;
        }
        if let Some(TokensSetting(tokens)) = self.tokens {
            if let Some(i) = tokens.iter().position(|t| t.trim().is_empty()) {
                return Err(KeyError::new(
                    "serve.tokens",
                    format!("token {} of {} is empty", i + 1, tokens.len()),
                ));
            }
            serve.tokens = tokens;
        }
        if let Some(path) = self.token_file {
            if path.as_os_str().is_empty() {
                return Err(KeyError::new("serve.token_file", "must not be empty"));
            }
            serve.token_file = Some(path);
        }
        set_present!(self => serve; protect_reads, with_loop);
        if let Some(bytes) = self.max_body_bytes {
            if bytes == 0 {
                return Err(KeyError::new("serve.max_body_bytes", "must be at least 1"));
            }
            serve.max_body_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.max_batch {
            if n == 0 {
                return Err(KeyError::new("serve.max_batch", "must be at least 1"));
            }
            serve.max_batch = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(secs) = self.shutdown_timeout_secs {
            serve.shutdown_timeout = Duration::from_secs(secs);
        }
        if let Some(TokensSetting(hosts)) = self.allowed_hosts {
            serve.allowed_hosts = hosts
                .iter()
                .map(|h| crate::serve::parse_allowed_host(h))
                .collect::<Result<_, _>>()
                .map_err(|reason| KeyError::new("serve.allowed_hosts", reason))?;
        }
        if let Some(TokensSetting(origins)) = self.allowed_origins {
            serve.allowed_origins = origins
                .iter()
                .map(|o| crate::serve::parse_allowed_origin(o))
                .collect::<Result<_, _>>()
                .map_err(|reason| KeyError::new("serve.allowed_origins", reason))?;
        }
        if let Some(n) = self.max_connections {
            let limit = crate::serve::MAX_CONNECTIONS_LIMIT;
            serve.max_connections = usize::try_from(n)
                .ok()
                .filter(|n| (1..=limit).contains(n))
                .ok_or_else(|| {
                    KeyError::new(
                        "serve.max_connections",
                        format!("{n} is not within 1..={limit}"),
                    )
                })?;
        }
        for (key, value, field) in [
            (
                "serve.header_timeout_secs",
                self.header_timeout_secs,
                &mut serve.header_timeout,
            ),
            (
                "serve.body_timeout_secs",
                self.body_timeout_secs,
                &mut serve.body_timeout,
            ),
            (
                "serve.write_timeout_secs",
                self.write_timeout_secs,
                &mut serve.write_timeout,
            ),
        ] {
            if let Some(secs) = value {
                if secs == 0 {
                    return Err(KeyError::new(key, "must be at least 1"));
                }
                *field = Duration::from_secs(secs);
            }
        }
        Ok(serve)
    }
}

impl LoopSection {
    /// The loop settings of `[loop]`, validated.
    fn into_settings(self) -> Result<LoopSettings, KeyError> {
        let mut settings = LoopSettings::default();
        if let Some(DurationSetting(interval)) = self.check_interval {
            settings.check_interval = interval;
        }
        set_present!(self => settings; enable_ab_testing, enable_auto_promotion);
        if let Some(cmd) = self.eval_cmd {
            if cmd.trim().is_empty() {
                return Err(KeyError::new("loop.eval_cmd", "must not be empty"));
            }
            settings.eval_cmd = Some(cmd);
        }
        if let Some(secs) = self.eval_timeout_secs {
            if secs == 0 {
                return Err(KeyError::new(
                    "loop.eval_timeout_secs",
                    "must be at least 1",
                ));
            }
            settings.eval_timeout = Duration::from_secs(secs);
        }
        let not_blank = |key: &str, value: Option<String>| match value {
            Some(v) if v.trim().is_empty() => Err(KeyError::new(key, "must not be empty")),
            other => Ok(other),
        };
        settings.champion = not_blank("loop.champion", self.champion)?;
        settings.champion_path = not_blank("loop.champion_path", self.champion_path)?;
        match (&settings.champion, &settings.champion_path) {
            (Some(_), None) => {
                return Err(KeyError::new(
                    "loop.champion",
                    "needs loop.champion_path (where the model lives)",
                ))
            }
            (None, Some(_)) => {
                return Err(KeyError::new(
                    "loop.champion_path",
                    "needs loop.champion (the model's name)",
                ))
            }
            _ => {}
        }
        if let Some(stem) = self.model_stem {
            if stem.trim().is_empty() || stem.chars().any(char::is_whitespace) {
                return Err(KeyError::new(
                    "loop.model_stem",
                    format!("{stem:?} must be non-empty and without whitespace"),
                ));
            }
            settings.model_stem = Some(stem);
        }
        settings.training_window = self.training_window.map(|DurationSetting(d)| d);
        Ok(settings)
    }
}

impl AbTestSection {
    /// The experiment settings of `[abtest]`, validated.
    fn into_config(self) -> Result<AbTestConfig, KeyError> {
        let mut abtest = AbTestConfig::default();
        set_present!(self => abtest;
            initial_challenger_traffic, min_samples_per_version, min_improvement_threshold,
            enable_auto_promotion, promotion_threshold, min_duration_hours, alpha, min_lift,
            expected_effect, min_feedback_per_version, enable_auto_rollback, srm_p_threshold,
            srm_min_deviation, check_interval_hours, min_units_per_arm, cuped,
            cuped_lookback_days, feedback_maturity_hours,
        );
        if let Some(MetricsSetting(metrics)) = self.ratio_metrics {
            abtest.ratio_metrics = metrics.into_iter().map(MetricSetting::metric).collect();
        }
        if let Some(primary) = self.primary_metric {
            abtest.primary_metric = match primary {
                PrimaryMetricSetting::Quality => PrimaryMetric::Quality,
                PrimaryMetricSetting::PositiveRate => PrimaryMetric::PositiveRate,
            };
        }
        if let Some(g) = self.guardrails {
            abtest.guardrails = guardrails(&g, abtest.primary_metric.metric())?;
        }
        let mut bandit = BanditConfig::default();
        if let Some(b) = self.bandit {
            set_present!(b => bandit; arm_floor, champion_floor, draws);
        }
        // Validate with the bandit on, so that a bad [abtest.bandit] is reported even while
        // the bandit is off, then switch it as configured.
        let probe = AbTestConfig {
            bandit: Some(bandit),
            ..abtest.clone()
        };
        probe.validate().map_err(|err| match err {
            AbTestError::InvalidConfig { field, reason } => {
                KeyError::new(format!("abtest.{field}"), reason)
            }
            other => KeyError::new("abtest", other.to_string()),
        })?;
        abtest.bandit = self.enable_bandit.unwrap_or(false).then_some(bandit);
        Ok(abtest)
    }
}

/// The guardrails of `[abtest.guardrails]`: each metric's setting, or its default when left
/// out, in a fixed order (latency, negative rate, positive rate, quality).
fn guardrails(section: &GuardrailsSection, primary: Metric) -> Result<Vec<Guardrail>, KeyError> {
    let default_margin = |metric: Metric| {
        AbTestConfig::default()
            .guardrails
            .iter()
            .find(|g| g.metric == metric)
            .map(|g| g.margin)
    };
    let settings = [
        (Metric::Latency, section.latency_ms),
        (Metric::NegativeRate, section.negative_rate),
        (Metric::PositiveRate, section.positive_rate),
        (Metric::Quality, section.quality),
    ];
    let mut out = Vec::new();
    for (metric, setting) in settings {
        let key = format!("abtest.guardrails.{}", metric.key());
        let margin = match setting {
            None => default_margin(metric),
            Some(GuardrailSetting::Off) => None,
            Some(GuardrailSetting::Margin(m)) if m.is_finite() && m > 0.0 => Some(m),
            Some(GuardrailSetting::Margin(m)) => {
                return Err(KeyError::new(
                    key,
                    format!("{m} is not a margin > 0 (write false for no guardrail)"),
                ))
            }
        };
        let Some(margin) = margin else { continue };
        if metric == primary {
            return Err(KeyError::new(
                key,
                format!(
                    "{} is the primary metric (abtest.primary_metric) and cannot also be a \
                     guardrail",
                    metric.key()
                ),
            ));
        }
        out.push(Guardrail { metric, margin });
    }
    Ok(out)
}

/// The key of `[generator]` that a [`GeneratorConfig`] field is set by.
pub(crate) fn generator_key(field: &str) -> String {
    match field {
        "near_dedupe.threshold" => "generator.near_dedupe_threshold".to_string(),
        other => format!("generator.{other}"),
    }
}

/// Checks that `name` is a plain file name: not empty, no directory part.
pub(crate) fn check_file_name(name: &str) -> Result<(), String> {
    let path = Path::new(name);
    let plain = path.file_name().is_some_and(|n| n == path.as_os_str());
    if name.trim().is_empty() || !plain || name == "." || name == ".." {
        return Err(format!("{name:?} is not a plain file name"));
    }
    Ok(())
}

/// One line describing a TOML error: where (line), which key, and what is wrong.
pub(super) fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let line = err.span().map(|span| {
        let end = span.start.min(text.len());
        1 + text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    });
    let location = line.map_or(String::new(), |l| format!(", line {l}"));
    let message = err.message().trim().replace('\n', "; ");
    let keys = key_path(text);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            let key = match &keys {
                Some(prefix) => format!("{prefix}.{name}"),
                None => name.to_string(),
            };
            let expected = expected.trim_start_matches(',').trim();
            let expected = if expected.is_empty() {
                String::new()
            } else {
                format!(" ({expected})")
            };
            return format!("{location}: unknown key {key}{expected}");
        }
    }
    match keys {
        Some(key) => format!("{location}: {key}: {message}"),
        None => format!("{location}: {message}"),
    }
}

/// The dotted key path of the first error in `text`, if there is one.
///
/// toml reports the key path only for errors without a position in the text, so the text is
/// parsed as a plain table and deserialized again from there: that error carries the path
/// (its message ends in "in `trigger.min_new_samples`").
fn key_path(text: &str) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    let err = toml::Value::Table(table).try_into::<FileConfig>().err()?;
    let display = err.to_string();
    let path = display
        .strip_prefix(err.message())?
        .trim()
        .strip_prefix("in `")?
        .strip_suffix('`')?;
    (!path.is_empty()).then(|| path.to_string())
}
