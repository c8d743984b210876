//! The config file (`--config FILE`, `AFS_CONFIG`, or `./afs.toml` when present): its TOML
//! sections and their mapping onto the libraries' configs.
//!
//! The file has four sections, every key optional (an absent key keeps the library's
//! default): `[trigger]` maps onto [`TriggerConfig`] (with `[trigger.page_hinkley]` onto its
//! [`PageHinkleyConfig`]), `[generator]` onto [`GeneratorConfig`], `[retrain]` onto
//! [`RetrainerConfig`] plus the trainer command and its timeout, and `[abtest]` onto
//! [`AbTestConfig`] (with `[abtest.guardrails]` for its guardrails and `[abtest.bandit]` for
//! its [`BanditConfig`]). Unknown keys and values of
//! the wrong type are refused with the key path and line; values out of range are refused by
//! the libraries' own `validate`, with the key named. `docs/CONFIGURATION.md` documents every
//! key and `afs.example.toml` at the repository root shows them with their defaults.
//!
//! This module is self-contained on purpose: the commands only see [`Config`], so the file
//! format can move to a layered config (file plus environment overrides) without touching
//! them.
//!
//! [`PageHinkleyConfig`]: afs_trigger::PageHinkleyConfig

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use afs_abtest::{AbTestConfig, AbTestError, BanditConfig, Guardrail, Metric, PrimaryMetric};
use afs_datagen::{DatagenError, Format, GeneratorConfig, NearDedupeConfig};
use afs_trigger::{RetrainerConfig, TriggerConfig, TriggerError};
use anyhow::Context;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use crate::exit::InvalidInput;

/// The file read when neither `--config` nor `AFS_CONFIG` names one, if it exists.
pub(crate) const DEFAULT_PATH: &str = "afs.toml";

/// Default timeout of the trainer command: a day, long enough for a typical fine-tune,
/// while a hung trainer holds the one-retrain-at-a-time lock no longer than that.
pub(crate) const DEFAULT_TIMEOUT_SECS: u64 = 86_400;

/// Every setting the commands read from the config file, defaults filled in and validated.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The file the settings were read from; `None` when no file was read.
    pub(crate) path: Option<PathBuf>,
    /// `[trigger]`: when to retrain.
    pub(crate) trigger: TriggerConfig,
    /// `[generator]`: how training data is generated (`afs generate`, `afs retrain`).
    pub(crate) generator: GeneratorConfig,
    /// The near-duplicate settings used when near-dedupe is on, also when a flag turns it
    /// on while the file leaves it off (`generator.near_dedupe_threshold`).
    pub(crate) near_dedupe: NearDedupeConfig,
    /// `[retrain]`: the trainer and the retrainer.
    pub(crate) retrain: RetrainSettings,
    /// `[abtest]`: champion/challenger experiments (`afs ab`).
    pub(crate) abtest: AbTestConfig,
}

/// The `[retrain]` section.
#[derive(Debug, Clone)]
pub(crate) struct RetrainSettings {
    /// The trainer command (`train_cmd`); `afs retrain` needs it here or as `--train-cmd`.
    pub(crate) train_cmd: Option<String>,
    /// How long the trainer may run (`timeout_secs`).
    pub(crate) timeout: Duration,
    /// `min_samples_for_retrain`, `output_dir`, `dataset_name`.
    pub(crate) retrainer: RetrainerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: None,
            trigger: TriggerConfig::default(),
            generator: GeneratorConfig::default(),
            near_dedupe: NearDedupeConfig::default(),
            retrain: RetrainSettings {
                train_cmd: None,
                timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
                retrainer: RetrainerConfig::default(),
            },
            abtest: AbTestConfig::default(),
        }
    }
}

impl Config {
    /// How a key of the file is named in messages: `generator.min_quality_score in afs.toml`.
    pub(crate) fn key_name(&self, key: &str) -> String {
        match &self.path {
            Some(path) => format!("{key} in {}", path.display()),
            None => format!("{key} (default)"),
        }
    }
}

/// Reads the config file: `explicit` (from `--config` or `AFS_CONFIG`), which must exist,
/// or else `./afs.toml` when it exists, or else nothing (every default).
///
/// A file that cannot be read is an I/O error (exit code 1); a file that is not valid is
/// [`InvalidInput`] (exit code 3) naming the file, the key and, when known, the line.
pub(crate) fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let path = PathBuf::from(DEFAULT_PATH);
            if !path.is_file() {
                tracing::debug!("no {DEFAULT_PATH} here; using the default settings");
                return Ok(Config::default());
            }
            path
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    tracing::debug!(config = %path.display(), "reading config file");
    Ok(parse(&text, &path)?)
}

/// Parses and validates the text of the config file at `path` (used in messages and as the
/// base of relative paths).
pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, InvalidInput> {
    let invalid = |detail: String| InvalidInput(format!("config file {}{detail}", path.display()));
    let file: FileConfig =
        toml::from_str(text).map_err(|err| invalid(describe_toml_error(text, &err)))?;
    let base = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty() && *dir != Path::new("."));
    file.into_config(path, base)
        .map_err(|KeyError { key, reason }| invalid(format!(": {key}: {reason}")))
}

/// A key of the file with a value out of range.
struct KeyError {
    /// Dotted key path, e.g. `trigger.page_hinkley.alpha`.
    key: String,
    /// Why it is refused.
    reason: String,
}

impl KeyError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        KeyError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    trigger: TriggerSection,
    #[serde(default)]
    generator: GeneratorSection,
    #[serde(default)]
    retrain: RetrainSection,
    #[serde(default)]
    abtest: AbTestSection,
}

/// `[trigger]`: the fields of [`TriggerConfig`] by their names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerSection {
    enable_sample_count: Option<bool>,
    min_new_samples: Option<u64>,
    enable_scheduled: Option<bool>,
    schedule_interval_hours: Option<f64>,
    schedule_on_first_run: Option<bool>,
    enable_quality_drop: Option<bool>,
    quality_drop_threshold: Option<f64>,
    quality_window_hours: Option<f64>,
    min_quality_samples: Option<u64>,
    enable_page_hinkley: Option<bool>,
    page_hinkley: Option<PageHinkleySection>,
    enable_error_rate: Option<bool>,
    error_rate_threshold: Option<f64>,
    error_rate_window_hours: Option<f64>,
    min_feedback_events: Option<u64>,
    cooldown_hours: Option<f64>,
}

/// `[trigger.page_hinkley]`: the fields of [`PageHinkleyConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageHinkleySection {
    min_instances: Option<u64>,
    delta: Option<f64>,
    threshold: Option<f64>,
    alpha: Option<f64>,
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
    write_back_scores: Option<bool>,
}

/// `[retrain]`: the trainer command and [`RetrainerConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrainSection {
    train_cmd: Option<String>,
    timeout_secs: Option<u64>,
    min_samples_for_retrain: Option<u64>,
    output_dir: Option<PathBuf>,
    dataset_name: Option<String>,
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
    guardrails: Option<GuardrailsSection>,
    bandit: Option<BanditSection>,
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

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "none" {
                    Ok(FeedbackSetting::NoCondition)
                } else {
                    Err(E::invalid_value(Unexpected::Str(v), &self))
                }
            }
        }

        deserializer.deserialize_any(FeedbackVisitor)
    }
}

/// Copies each `Some` field of `$from` onto the field of the same name of `$to`.
macro_rules! set_present {
    ($from:expr => $to:expr; $($field:ident),* $(,)?) => {
        $( if let Some(value) = $from.$field { $to.$field = value; } )*
    };
}

impl FileConfig {
    /// The settings of this file, read from `path`; relative paths in it are relative to
    /// `base`, the directory of the file (`None`: the current directory).
    fn into_config(self, path: &Path, base: Option<&Path>) -> Result<Config, KeyError> {
        let resolve = |p: PathBuf| match base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        };
        let mut config = Config {
            path: Some(path.to_path_buf()),
            ..Config::default()
        };

        let t = self.trigger;
        set_present!(t => config.trigger;
            enable_sample_count, min_new_samples, enable_scheduled, schedule_interval_hours,
            schedule_on_first_run, enable_quality_drop, quality_drop_threshold,
            quality_window_hours, min_quality_samples, enable_page_hinkley, enable_error_rate,
            error_rate_threshold, error_rate_window_hours, min_feedback_events, cooldown_hours,
        );
        if let Some(ph) = t.page_hinkley {
            set_present!(ph => config.trigger.page_hinkley; min_instances, delta, threshold, alpha);
        }
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
            seed, write_back_scores,
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
        generator.max_samples = g.max_samples.or(generator.max_samples);
        generator.existing = g.existing.map(resolve).or(generator.existing.take());
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
        let probe = GeneratorConfig {
            near_dedupe: Some(config.near_dedupe.clone()),
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

        let r = self.retrain;
        let retrain = &mut config.retrain;
        if let Some(cmd) = r.train_cmd {
            if cmd.trim().is_empty() {
                return Err(KeyError::new("retrain.train_cmd", "must not be empty"));
            }
            retrain.train_cmd = Some(cmd);
        }
        if let Some(secs) = r.timeout_secs {
            if secs == 0 {
                return Err(KeyError::new("retrain.timeout_secs", "must be at least 1"));
            }
            retrain.timeout = Duration::from_secs(secs);
        }
        if let Some(n) = r.min_samples_for_retrain {
            if n == 0 {
                return Err(KeyError::new(
                    "retrain.min_samples_for_retrain",
                    "must be at least 1",
                ));
            }
            retrain.retrainer.min_samples_for_retrain = n;
        }
        if let Some(dir) = r.output_dir {
            if dir.as_os_str().is_empty() {
                return Err(KeyError::new("retrain.output_dir", "must not be empty"));
            }
            retrain.retrainer.output_dir = resolve(dir);
        } else if let Some(base) = base {
            retrain.retrainer.output_dir = base.join(&retrain.retrainer.output_dir);
        }
        if let Some(name) = r.dataset_name {
            check_file_name(&name)
                .map_err(|reason| KeyError::new("retrain.dataset_name", reason))?;
            retrain.retrainer.dataset_name = name;
        }

        config.abtest = self.abtest.into_config()?;
        Ok(config)
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
            srm_min_deviation, check_interval_hours,
        );
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
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use afs_trigger::PageHinkleyConfig;

    /// The example file at the repository root.
    const EXAMPLE: &str = include_str!("../../../afs.example.toml");

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
        assert_eq!(config.retrain.retrainer, defaults.retrain.retrainer);
        assert_eq!(config.retrain.train_cmd, None);
        assert_eq!(config.abtest, defaults.abtest);
        assert_eq!(config.abtest, AbTestConfig::default());
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
    }

    #[test]
    fn the_toml_examples_of_the_docs_are_valid() {
        let docs = [
            include_str!("../../../docs/CONFIGURATION.md"),
            include_str!("../../../docs/CLI.md"),
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
        assert_eq!(r.retrainer.min_samples_for_retrain, 3);
        assert_eq!(r.retrainer.output_dir, PathBuf::from("out"));
        assert_eq!(r.retrainer.dataset_name, "data.jsonl");
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
        };
        assert_eq!(config.abtest, expected);
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
            "[trainer]\ntrain_cmd = \"x\"\n",
            &["line 1", "unknown key trainer"],
        );
        check_err("[trigger\n", &["config file afs.toml, line 1"]);
        check_err(
            "trigger = 3\n",
            &["trigger", "expected struct TriggerSection"],
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
        check(
            "[generator]\nformat = \"jsonl\"",
            "generator.format: unknown format \"jsonl\"",
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
        assert_eq!(
            config.retrain.retrainer.output_dir,
            Path::new("/etc/afs/out")
        );
        let config = parse("", Path::new("/etc/afs/afs.toml")).unwrap();
        assert_eq!(
            config.retrain.retrainer.output_dir,
            Path::new("/etc/afs/continuous_output")
        );
        let text = "[retrain]\noutput_dir = \"/var/afs\"\n";
        let config = parse(text, Path::new("conf/afs.toml")).unwrap();
        assert_eq!(config.retrain.retrainer.output_dir, Path::new("/var/afs"));
        let config = parse("", Path::new("afs.toml")).unwrap();
        assert_eq!(
            config.retrain.retrainer.output_dir,
            Path::new("continuous_output")
        );
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
}
