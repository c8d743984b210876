//! `LoopConfig`: the seed's loop settings with their names and defaults, the nested
//! settings of every layer, and the evaluation gate.

use std::path::{Component, Path};
use std::time::Duration;

use afs_abtest::{AbTestConfig, AbTestError};
use afs_datagen::{DatagenError, GeneratorConfig};
use afs_store::NewModelVersion;
use afs_trigger::{RetrainerConfig, TriggerConfig, TriggerError};

use crate::error::{LoopError, Result};

/// A command that must succeed on a freshly trained model before it is deployed.
///
/// It runs with `sh -c` in its own process group. Placeholders, replaced by shell-quoted
/// values: `{model_path}` (what the trainer reported), `{run_id}`, `{run_dir}`, `{data}`
/// (the training file). The same values are in the environment as `AFS_MODEL_PATH`,
/// `AFS_RUN_ID`, `AFS_RUN_DIR`, `AFS_DATA_PATH`. Its stdout and stderr go to
/// `eval.stdout.log` and `eval.stderr.log` in the run directory. Exit status 0 passes the
/// model; any other status, a failure to start, or running past `timeout` (the whole process
/// group is then killed) rejects it, and the model is not deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalGate {
    /// The command line (non-empty).
    pub command: String,
    /// How long it may run (> 0).
    pub timeout: Duration,
}

impl EvalGate {
    /// A gate running `command` with a timeout of one hour.
    pub fn new(command: impl Into<String>) -> Self {
        EvalGate {
            command: command.into(),
            timeout: Duration::from_secs(3600),
        }
    }
}

/// Settings of the [`crate::ContinuousLearningLoop`].
///
/// The loop's own fields keep the seed's `LoopConfig` names where they exist
/// (`check_interval_seconds` became a [`Duration`]; `db_path` is gone because the store is
/// passed in; the seed's `output_dir` is `retrainer.output_dir`). The nested configs are
/// the layers' own, with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// How often [`crate::ContinuousLearningLoop::run_loop`] runs an iteration, measured on
    /// the store's clock from the start of one iteration to the start of the next
    /// (default 1 h, > 0).
    pub check_interval: Duration,
    /// Deploy each new model as a challenger in a champion/challenger experiment
    /// (default true). When false a new model replaces the champion directly if
    /// `enable_auto_promotion` is on, and is only reported otherwise.
    pub enable_ab_testing: bool,
    /// Apply a `promote` decision automatically (default true). The effective setting is
    /// this *and* `abtest.enable_auto_promotion`: either one can turn promotion off.
    pub enable_auto_promotion: bool,
    /// When to retrain (`[trigger]`).
    pub trigger: TriggerConfig,
    /// How each run's dataset is generated (`[generator]`).
    pub generator: GeneratorConfig,
    /// Champion/challenger experiments (`[abtest]`).
    pub abtest: AbTestConfig,
    /// The retrainer: minimum samples, `output_dir` (the seed's) and dataset name.
    pub retrainer: RetrainerConfig,
    /// afs: a command that must pass on each new model before it is deployed (`None`: no gate).
    pub eval_gate: Option<EvalGate>,
    /// afs: only records of this recent window go into a dataset (`None`, the default: the
    /// whole log, subject to `generator.since`/`until`). Must be > 0 when set; when both are
    /// given, the later of `now − training_window` and `generator.since` applies.
    pub training_window: Option<Duration>,
    /// afs: the champion to register when the store has none yet (the model serving before
    /// the loop's first retrain). Without it and without a champion, the first trained model
    /// becomes the champion.
    pub initial_champion: Option<NewModelVersion>,
    /// afs: the name stem of new models, which are called `<stem>-v<N>` with `N` one above the
    /// highest version of that stem ever registered. `None` (default): the champion's name
    /// without its `-v<N>` suffix (`nayru-v1` → `nayru-v2`), or `model` without a champion.
    /// A trainer can name its model itself with a string metric `model_name`.
    pub model_stem: Option<String>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            check_interval: Duration::from_secs(3600),
            enable_ab_testing: true,
            enable_auto_promotion: true,
            trigger: TriggerConfig::default(),
            generator: GeneratorConfig::default(),
            abtest: AbTestConfig::default(),
            retrainer: RetrainerConfig::default(),
            eval_gate: None,
            training_window: None,
            initial_champion: None,
            model_stem: None,
        }
    }
}

impl LoopConfig {
    /// Checks every setting, the nested configs included; the first problem found is
    /// returned as [`LoopError::InvalidConfig`] naming it as `section.field`.
    pub fn validate(&self) -> Result<()> {
        if self.check_interval.is_zero() {
            return Err(LoopError::config("loop.check_interval", "must be > 0"));
        }
        if let Some(window) = self.training_window {
            if window.is_zero() {
                return Err(LoopError::config("loop.training_window", "must be > 0"));
            }
        }
        if let Some(gate) = &self.eval_gate {
            if gate.command.trim().is_empty() {
                return Err(LoopError::config("loop.eval_cmd", "must not be empty"));
            }
            if gate.timeout.is_zero() {
                return Err(LoopError::config("loop.eval_timeout", "must be > 0"));
            }
        }
        if let Some(champion) = &self.initial_champion {
            if champion.name.trim().is_empty() {
                return Err(LoopError::config("loop.champion", "must not be empty"));
            }
            if champion.model_path.trim().is_empty() {
                return Err(LoopError::config("loop.champion_path", "must not be empty"));
            }
        }
        if let Some(stem) = &self.model_stem {
            if stem.trim().is_empty() || stem.chars().any(char::is_whitespace) {
                return Err(LoopError::config(
                    "loop.model_stem",
                    format!("{stem:?} must be non-empty and without whitespace"),
                ));
            }
        }
        self.trigger.validate().map_err(|e| match e {
            TriggerError::Config { field, reason } => {
                LoopError::config(format!("trigger.{field}"), reason)
            }
            other => LoopError::Trigger(other),
        })?;
        self.generator.validate().map_err(|e| match e {
            DatagenError::InvalidConfig { field, reason } => {
                LoopError::config(format!("generator.{field}"), reason)
            }
            other => LoopError::config("generator", other.to_string()),
        })?;
        self.abtest.validate().map_err(|e| match e {
            AbTestError::InvalidConfig { field, reason } => {
                LoopError::config(format!("abtest.{field}"), reason)
            }
            other => LoopError::AbTest(other),
        })?;
        if self.retrainer.output_dir.as_os_str().is_empty() {
            return Err(LoopError::config("retrain.output_dir", "must not be empty"));
        }
        let name = Path::new(&self.retrainer.dataset_name);
        let plain = matches!(
            name.components().collect::<Vec<_>>().as_slice(),
            [Component::Normal(_)]
        );
        if !plain {
            return Err(LoopError::config(
                "retrain.dataset_name",
                format!(
                    "{:?} must be a plain file name",
                    self.retrainer.dataset_name
                ),
            ));
        }
        Ok(())
    }

    /// Whether a `promote` decision is applied automatically: both this config's
    /// `enable_auto_promotion` and `abtest.enable_auto_promotion` must allow it.
    pub fn auto_promotion(&self) -> bool {
        self.enable_auto_promotion && self.abtest.enable_auto_promotion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(config: LoopConfig) -> Option<String> {
        match config.validate() {
            Ok(()) => None,
            Err(LoopError::InvalidConfig { key, .. }) => Some(key),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn validation_names_the_key() {
        let ok = LoopConfig::default();
        assert_eq!(key_of(ok.clone()), None);
        let cases: Vec<(LoopConfig, &str)> = vec![
            (
                LoopConfig {
                    check_interval: Duration::ZERO,
                    ..ok.clone()
                },
                "loop.check_interval",
            ),
            (
                LoopConfig {
                    training_window: Some(Duration::ZERO),
                    ..ok.clone()
                },
                "loop.training_window",
            ),
            (
                LoopConfig {
                    eval_gate: Some(EvalGate::new("  ")),
                    ..ok.clone()
                },
                "loop.eval_cmd",
            ),
            (
                LoopConfig {
                    eval_gate: Some(EvalGate {
                        command: "true".into(),
                        timeout: Duration::ZERO,
                    }),
                    ..ok.clone()
                },
                "loop.eval_timeout",
            ),
            (
                LoopConfig {
                    initial_champion: Some(NewModelVersion::new("", "/m")),
                    ..ok.clone()
                },
                "loop.champion",
            ),
            (
                LoopConfig {
                    model_stem: Some("a b".into()),
                    ..ok.clone()
                },
                "loop.model_stem",
            ),
            (
                LoopConfig {
                    trigger: TriggerConfig {
                        cooldown_hours: -1.0,
                        ..TriggerConfig::default()
                    },
                    ..ok.clone()
                },
                "trigger.cooldown_hours",
            ),
            (
                LoopConfig {
                    generator: GeneratorConfig {
                        min_quality_score: 2.0,
                        ..GeneratorConfig::default()
                    },
                    ..ok.clone()
                },
                "generator.min_quality_score",
            ),
            (
                LoopConfig {
                    abtest: AbTestConfig {
                        alpha: 0.0,
                        ..AbTestConfig::default()
                    },
                    ..ok.clone()
                },
                "abtest.alpha",
            ),
            (
                LoopConfig {
                    retrainer: RetrainerConfig {
                        dataset_name: "../x.jsonl".into(),
                        ..RetrainerConfig::default()
                    },
                    ..ok.clone()
                },
                "retrain.dataset_name",
            ),
            (
                LoopConfig {
                    retrainer: RetrainerConfig {
                        output_dir: "".into(),
                        ..RetrainerConfig::default()
                    },
                    ..ok
                },
                "retrain.output_dir",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(key_of(config).as_deref(), Some(key));
        }
    }

    #[test]
    fn auto_promotion_needs_both_switches() {
        let mut config = LoopConfig::default();
        assert!(config.auto_promotion());
        config.abtest.enable_auto_promotion = false;
        assert!(!config.auto_promotion());
        config.abtest.enable_auto_promotion = true;
        config.enable_auto_promotion = false;
        assert!(!config.auto_promotion());
    }
}
