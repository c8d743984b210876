//! The configuration: one TOML file, `AFS_<SECTION>__<KEY>` environment variables and
//! `--set SECTION.KEY=VALUE` flags, layered in that order (a later layer wins) with the
//! `config` crate, checked key by key, and mapped onto the libraries' configs.
//!
//! The file is `--config FILE`, `AFS_CONFIG`, or `./afs.toml` when present. Its sections,
//! every key optional (an absent key keeps the default): `[store]` maps onto
//! [`afs_store_sqlite::SqliteConfig`], `[trigger]` (with `[trigger.page_hinkley]`) onto
//! [`TriggerConfig`], `[generator]` onto [`GeneratorConfig`], `[abtest]` (with
//! `[abtest.guardrails]` and `[abtest.bandit]`) onto [`AbTestConfig`], `[loop]` onto the
//! loop's own fields of [`LoopConfig`], and `[trainer]` onto the trainer command, its timeout
//! and [`RetrainerConfig`], and `[serve]` onto the settings of `afs serve` (under its flags).
//! `[retrain]` is the old name of `[trainer]` and is still read.
//!
//! Every layer is checked on its own before the merge, so an error names where the bad
//! value came from: the file (with the line), the environment variable, or the flag.
//! Unknown keys and values of the wrong type are refused; values out of range are refused
//! by the libraries' own `validate`, with the key named. Each section is one serde type,
//! read from every layer and shown as it is: `[store]` and `[trigger]` are the libraries'
//! configs themselves ([`SqliteConfig`], [`TriggerConfig`]), `[abtest]` and `[generator]`
//! their written forms, `[loop]`, `[trainer]` and `[serve]` the CLI's [`LoopSettings`],
//! [`RetrainSettings`] and [`ServeSettings`]. `docs/CONFIGURATION.md` documents every key, and `afs.example.toml` at the
//! repository root shows them with their defaults; `schema_docs_tests.rs` checks both
//! against the schema.
//!
//! The commands only see [`Config`], so the layering can change without touching them;
//! [`load`] takes the `--set` flags from the [`GlobalArgs`] it is given.

mod sections;
mod show;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use afs_abtest::AbTestConfig;
use afs_datagen::{GeneratorConfig, NearDedupeConfig};
use afs_loop::{EvalGate, LoopConfig, LoopError};
use afs_store::NewModelVersion;
use afs_store_sqlite::{SqliteConfig, Synchronous};
use afs_trigger::{RetrainerConfig, TriggerConfig};
use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cli::GlobalArgs;
use crate::exit::InvalidInput;
use sections::{describe_toml_error, FileConfig, KeyError};

#[cfg(test)]
use sections::check_file_name;
pub(crate) use sections::generator_key;
pub(crate) use show::{to_json, to_toml};

/// The file read when neither `--config` nor `AFS_CONFIG` names one, if it exists.
pub(crate) const DEFAULT_PATH: &str = "afs.toml";

/// Default timeout of the trainer command: a day, long enough for a typical fine-tune,
/// while a hung trainer holds the one-retrain-at-a-time lock no longer than that.
pub(crate) const DEFAULT_TIMEOUT_SECS: u64 = 86_400;

/// Default timeout of the evaluation command (`loop.eval_timeout_secs`): an hour.
pub(crate) const DEFAULT_EVAL_TIMEOUT_SECS: u64 = 3600;

/// Environment variables named `AFS_<SECTION>__<KEY>` (two underscores between the levels)
/// override keys of the file. Other `AFS_` variables (`AFS_DB`, `AFS_CONFIG`, `AFS_NOW`,
/// `AFS_TOKENS`, ...) have no `__` and are not config keys.
const ENV_PREFIX: &str = "AFS_";
const ENV_SEPARATOR: &str = "__";

/// Every setting the commands read from the configuration, defaults filled in and validated.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    /// The file the settings were read from; `None` when no file was read.
    pub(crate) path: Option<PathBuf>,
    /// `[store]`: how the database is opened (its `path` unset: that is `--db`, see
    /// [`Config::store_config`]).
    pub(crate) store: SqliteConfig,
    /// `[trigger]`: when to retrain.
    pub(crate) trigger: TriggerConfig,
    /// `[generator]`: how training data is generated (`afs generate`, `afs retrain`).
    pub(crate) generator: GeneratorConfig,
    /// The near-duplicate settings used when near-dedupe is on, also when a flag turns it
    /// on while the file leaves it off (`generator.near_dedupe_threshold`).
    pub(crate) near_dedupe: NearDedupeConfig,
    /// `[trainer]` (formerly `[retrain]`): the trainer and the retrainer.
    pub(crate) retrain: RetrainSettings,
    /// `[abtest]`: champion/challenger experiments (`afs ab`, the loop).
    pub(crate) abtest: AbTestConfig,
    /// `[loop]`: the continuous loop (`afs loop`).
    pub(crate) loop_settings: LoopSettings,
    /// `[serve]`: the HTTP service (`afs serve`).
    pub(crate) serve: ServeSettings,
    /// Where each key that is not a default came from.
    pub(crate) sources: Sources,
}

/// The `[trainer]` section (formerly `[retrain]`), declared once: its serde keys are the
/// file's (read from every layer, written by `afs config show`), its [`Default`] the
/// defaults and `checked` (in `sections.rs`) the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetrainSettings {
    /// `train_cmd`: the trainer command; `afs retrain` and `afs loop` need it here or as
    /// `--train-cmd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) train_cmd: Option<String>,
    /// `timeout_secs`: how long the trainer may run.
    #[serde(rename = "timeout_secs", with = "sections::whole_secs")]
    pub(crate) timeout: Duration,
    /// `min_samples_for_retrain`: refuse to train on fewer samples.
    pub(crate) min_samples_for_retrain: u64,
    /// `output_dir`: each run gets `runs/<run id>/` under it.
    pub(crate) output_dir: PathBuf,
    /// `dataset_name`: the dataset's file name inside the run directory.
    pub(crate) dataset_name: String,
}

impl Default for RetrainSettings {
    fn default() -> Self {
        let defaults = RetrainerConfig::default();
        RetrainSettings {
            train_cmd: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            min_samples_for_retrain: defaults.min_samples_for_retrain,
            output_dir: defaults.output_dir,
            dataset_name: defaults.dataset_name,
        }
    }
}

impl RetrainSettings {
    /// The retrainer's part of these settings.
    pub(crate) fn retrainer(&self) -> RetrainerConfig {
        RetrainerConfig {
            min_samples_for_retrain: self.min_samples_for_retrain,
            output_dir: self.output_dir.clone(),
            dataset_name: self.dataset_name.clone(),
        }
    }
}

/// The `[loop]` section: the loop's own fields of [`LoopConfig`], declared once: its serde
/// keys are the file's (read from every layer, written by `afs config show`), its
/// [`Default`] the defaults and [`LoopSettings::validate`] the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LoopSettings {
    /// `check_interval`: time between the starts of two iterations (seconds, or `30m`).
    #[serde(with = "sections::duration_text")]
    pub(crate) check_interval: Duration,
    /// `enable_ab_testing`: deploy new models as challengers.
    pub(crate) enable_ab_testing: bool,
    /// `enable_auto_promotion`: apply promote decisions (with `abtest.enable_auto_promotion`).
    pub(crate) enable_auto_promotion: bool,
    /// `eval_cmd`: the evaluation gate's command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) eval_cmd: Option<String>,
    /// `eval_timeout_secs`: how long the evaluation command may run.
    #[serde(rename = "eval_timeout_secs", with = "sections::whole_secs")]
    pub(crate) eval_timeout: Duration,
    /// `champion`: the model to register as champion when the database has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) champion: Option<String>,
    /// `champion_path`: where that model lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) champion_path: Option<String>,
    /// `model_stem`: the name stem of new models (`<stem>-v<N>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model_stem: Option<String>,
    /// `training_window`: only records this recent go into a dataset.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "sections::optional_duration_text"
    )]
    pub(crate) training_window: Option<Duration>,
}

impl Default for LoopSettings {
    fn default() -> Self {
        let defaults = LoopConfig::default();
        LoopSettings {
            check_interval: defaults.check_interval,
            enable_ab_testing: defaults.enable_ab_testing,
            enable_auto_promotion: defaults.enable_auto_promotion,
            eval_cmd: None,
            eval_timeout: Duration::from_secs(DEFAULT_EVAL_TIMEOUT_SECS),
            champion: None,
            champion_path: None,
            model_stem: defaults.model_stem,
            training_window: defaults.training_window,
        }
    }
}

/// Default address of `afs serve`: loopback only.
pub(crate) const DEFAULT_SERVE_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// Default limit on a request body of `afs serve`: 16 MiB, room for a batch of several
/// thousand records.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Default limit on the records of one batch of `afs serve`. A batch is one transaction
/// that holds the store's writer, so an unbounded batch would stall every single-record
/// request behind it.
pub(crate) const DEFAULT_MAX_BATCH: usize = 10_000;

/// Default time `afs serve` waits at shutdown for in-flight requests and the loop.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// Default limit on the connections `afs serve` holds open at once.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default time `afs serve` gives a connection to send a complete request head (from the
/// moment it waits for one: a new connection, or a kept-alive one after its last answer).
pub(crate) const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;

/// Default time `afs serve` gives a request to send its whole body after its head.
pub(crate) const DEFAULT_BODY_TIMEOUT_SECS: u64 = 30;

/// Default `serve.write_timeout_secs`: an answer whose client reads nothing of it for this
/// long is dropped with its connection.
pub(crate) const DEFAULT_WRITE_TIMEOUT_SECS: u64 = 30;

/// The `[serve]` section: the settings of `afs serve` under its flags, declared once: its
/// serde keys are the file's (read from every layer, written by `afs config show`, which
/// never shows the tokens), its [`Default`] the defaults and `checked` (in `sections.rs`)
/// the checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServeSettings {
    /// `addr`: where to listen.
    #[serde(with = "sections::socket_addr_text")]
    pub(crate) addr: SocketAddr,
    /// `tokens`: bearer tokens given inline (secrets: never written out).
    #[serde(skip_serializing, deserialize_with = "sections::text_list")]
    pub(crate) tokens: Vec<String>,
    /// `token_file`: a file of bearer tokens, one a line (resolved against the config
    /// file's directory; read by `afs serve`, see [`Config::serve_tokens`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token_file: Option<PathBuf>,
    /// `protect_reads`: with tokens, reads need one too.
    pub(crate) protect_reads: bool,
    /// `max_body_bytes`: the largest request body.
    pub(crate) max_body_bytes: usize,
    /// `max_batch`: the most records in one batch.
    pub(crate) max_batch: usize,
    /// `shutdown_timeout_secs`: how long shutdown waits.
    #[serde(rename = "shutdown_timeout_secs", with = "sections::whole_secs")]
    pub(crate) shutdown_timeout: Duration,
    /// `with_loop`: run the continuous loop in the service's process.
    pub(crate) with_loop: bool,
    /// `allowed_hosts`: host names served besides the loopback ones.
    #[serde(deserialize_with = "sections::text_list")]
    pub(crate) allowed_hosts: Vec<String>,
    /// `allowed_origins`: origins (`https://host[:port]`) whose pages may write.
    #[serde(deserialize_with = "sections::text_list")]
    pub(crate) allowed_origins: Vec<String>,
    /// `max_connections`: the most connections held open at once.
    pub(crate) max_connections: usize,
    /// `header_timeout_secs`: time for a connection to send a complete request head.
    #[serde(rename = "header_timeout_secs", with = "sections::whole_secs")]
    pub(crate) header_timeout: Duration,
    /// `body_timeout_secs`: time for a request to send its body.
    #[serde(rename = "body_timeout_secs", with = "sections::whole_secs")]
    pub(crate) body_timeout: Duration,
    /// `write_timeout_secs`: time an answer may wait for its client to read.
    #[serde(rename = "write_timeout_secs", with = "sections::whole_secs")]
    pub(crate) write_timeout: Duration,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            addr: DEFAULT_SERVE_ADDR,
            tokens: Vec::new(),
            token_file: None,
            protect_reads: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            shutdown_timeout: Duration::from_secs(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            with_loop: false,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
            write_timeout: Duration::from_secs(DEFAULT_WRITE_TIMEOUT_SECS),
        }
    }
}

/// Where the keys of a configuration came from, for messages and `afs config show`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sources {
    /// The file read, if any.
    pub(crate) file: Option<PathBuf>,
    /// Keys the file sets under the old section name `[retrain]` (by their `trainer.` name).
    legacy: BTreeSet<String>,
    /// Keys set by environment variables: key → variable name.
    pub(crate) env: BTreeMap<String, String>,
    /// Keys set by `--set`.
    pub(crate) flags: BTreeSet<String>,
}

impl Sources {
    /// Whether `key` (or a table above it) is set by the file and by no later layer.
    fn set_by_file(&self, key: &str) -> bool {
        self.file.is_some() && self.env_var(key).is_none() && !self.by_flag(key)
    }

    fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| covers(k, key))
            .map(|(_, var)| var.as_str())
    }

    fn by_flag(&self, key: &str) -> bool {
        self.flags.iter().any(|k| covers(k, key))
    }

    /// How `key` is written in the layer it came from: a key the file sets under
    /// `[retrain]` is `retrain.KEY`.
    fn file_key(&self, key: &str) -> String {
        match key.strip_prefix("trainer.") {
            Some(rest) if self.legacy.contains(key) => format!("retrain.{rest}"),
            _ => key.to_string(),
        }
    }

    /// The start of a message about `key`: where its value came from, and the key itself.
    pub(crate) fn locate(&self, key: &str) -> String {
        if self.by_flag(key) {
            return format!("--set {key}");
        }
        if let Some(var) = self.env_var(key) {
            return format!("environment variable {var}: {key}");
        }
        match &self.file {
            Some(path) => format!("config file {}: {}", path.display(), self.file_key(key)),
            None => format!("configuration: {key}"),
        }
    }

    /// `key` with where its value came from, for messages of the commands:
    /// `generator.min_quality_score in afs.toml`.
    pub(crate) fn key_name(&self, key: &str) -> String {
        if self.by_flag(key) {
            return format!("{key} (from --set)");
        }
        if let Some(var) = self.env_var(key) {
            return format!("{key} (from {var})");
        }
        match &self.file {
            Some(path) => format!("{} in {}", self.file_key(key), path.display()),
            None => format!("{key} (default)"),
        }
    }

    /// The layers, in order, for `afs config show`: the file, each variable, each flag.
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(path) = &self.file {
            out.push(format!("file {}", path.display()));
        }
        let vars: BTreeSet<&String> = self.env.values().collect();
        out.extend(vars.into_iter().map(|var| format!("environment {var}")));
        out.extend(self.flags.iter().map(|key| format!("--set {key}")));
        out
    }
}

/// Whether a value set at `set` (a key, or a table above it) covers `key`.
fn covers(set: &str, key: &str) -> bool {
    key == set || key.starts_with(&format!("{set}.")) || set.starts_with(&format!("{key}."))
}

/// One `--set KEY=VALUE` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Override {
    /// The dotted key, e.g. `trigger.min_new_samples`.
    pub(crate) key: String,
    /// The value as written; converted to the key's type like an environment variable.
    pub(crate) value: String,
}

/// Parses a `--set` flag's value: `SECTION.KEY=VALUE`.
pub(crate) fn parse_override(text: &str) -> Result<Override, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} is not KEY=VALUE (e.g. trigger.min_new_samples=500)"
        ));
    };
    let key = key.trim();
    let valid = !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    if !valid {
        return Err(format!(
            "{key:?} is not a key such as trigger.min_new_samples (lowercase, dotted)"
        ));
    }
    Ok(Override {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// One `AFS_<SECTION>__<KEY>` environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvVar {
    /// Its name, e.g. `AFS_TRIGGER__MIN_NEW_SAMPLES`.
    pub(crate) name: String,
    /// Its value.
    pub(crate) value: String,
}

/// The config variables of the environment, sorted by name. A variable whose value is not
/// UTF-8 is an error naming it.
fn env_vars() -> Result<Vec<EnvVar>, InvalidInput> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !is_config_var(name) {
            continue;
        }
        let value = value.into_string().map_err(|_| {
            InvalidInput(format!(
                "environment variable {name}: its value is not UTF-8"
            ))
        })?;
        vars.push(EnvVar {
            name: name.to_string(),
            value,
        });
    }
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vars)
}

/// Whether an environment variable is a config key: `AFS_` then a section, `__`, a key.
fn is_config_var(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
}

/// The key an environment variable sets: `AFS_TRIGGER__MIN_NEW_SAMPLES` →
/// `trigger.min_new_samples`.
fn env_key(name: &str) -> String {
    name.strip_prefix(ENV_PREFIX)
        .unwrap_or(name)
        .to_lowercase()
        .replace(ENV_SEPARATOR, ".")
}

/// The key under its current section name: `retrain.X` → `trainer.X`.
fn canonical_key(key: &str) -> (String, bool) {
    match key.strip_prefix("retrain") {
        Some(rest) if rest.is_empty() || rest.starts_with('.') => (format!("trainer{rest}"), true),
        _ => (key.to_string(), false),
    }
}

/// Reads the configuration of the global options `global`: the file `global.config` (from
/// `--config` or `AFS_CONFIG`), which must exist, or else `./afs.toml` when it exists, or
/// else none; then the `AFS_..__..` environment variables; then the `--set` flags
/// (`global.set`).
///
/// A file that cannot be read is an I/O error (exit code 1); an invalid layer is
/// [`InvalidInput`] (exit code 3) naming the file (and line), variable or flag, and the key.
pub(crate) fn load(global: &GlobalArgs) -> anyhow::Result<Config> {
    let path = match global.config.as_deref() {
        Some(path) => Some(path.to_path_buf()),
        None => {
            let path = PathBuf::from(DEFAULT_PATH);
            if path.is_file() {
                Some(path)
            } else {
                tracing::debug!("no {DEFAULT_PATH} here; no config file");
                None
            }
        }
    };
    let text = match &path {
        Some(path) => {
            tracing::debug!(config = %path.display(), "reading config file");
            Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?,
            )
        }
        None => None,
    };
    let file = path.as_deref().zip(text.as_deref());
    Ok(build(file, &env_vars()?, &global.set)?)
}

/// Parses and validates the text of the config file at `path` alone (no environment, no
/// flags). `path` is used in messages and as the base of relative paths.
#[cfg(test)]
pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, InvalidInput> {
    build(Some((path, text)), &[], &[])
}

/// Layers the file (path and text), the environment variables and the flags, checks each
/// layer, and maps the result onto the libraries' configs.
pub(crate) fn build(
    file: Option<(&Path, &str)>,
    env: &[EnvVar],
    flags: &[Override],
) -> Result<Config, InvalidInput> {
    let mut sources = Sources::default();
    let mut builder = config::Config::builder();

    if let Some((path, text)) = file {
        let invalid =
            |detail: String| InvalidInput(format!("config file {}{detail}", path.display()));
        // The file alone first, strictly, so that an error has its line.
        toml::from_str::<FileConfig>(text)
            .map_err(|err| invalid(describe_toml_error(text, &err)))?;
        let (folded, legacy) = fold_legacy(text).map_err(|e| invalid(format!(": {e}")))?;
        builder = builder.add_source(config::File::from_str(&folded, config::FileFormat::Toml));
        sources.file = Some(path.to_path_buf());
        sources.legacy = legacy;
    }

    let mut env_source = HashMap::new();
    for var in env {
        let (key, _) = canonical_key(&env_key(&var.name));
        let canonical_name = format!(
            "{ENV_PREFIX}{}",
            key.to_uppercase().replace('.', ENV_SEPARATOR)
        );
        if let Some(other) = sources.env.get(&key) {
            return Err(InvalidInput(format!(
                "environment variables {other} and {}: both set {key} ([retrain] is the old \
                 name of [trainer]); keep one",
                var.name
            )));
        }
        let single = HashMap::from([(canonical_name.clone(), var.value.clone())]);
        check_layer(env_layer(single), &key)
            .map_err(|e| InvalidInput(format!("environment variable {}: {e}", var.name)))?;
        sources.env.insert(key, var.name.clone());
        env_source.insert(canonical_name, var.value.clone());
    }
    if !env_source.is_empty() {
        builder = builder.add_source(env_layer(env_source));
    }

    for flag in flags {
        let (key, _) = canonical_key(&flag.key);
        let single = config::Config::builder()
            .set_override(key.as_str(), flag.value.as_str())
            .map_err(|e| InvalidInput(format!("--set {}: {e}", flag.key)))?;
        // The flag names the key already: "--set K: what is wrong", not "--set K: K: ...".
        check_builder(single, &key).map_err(|e| {
            let what = e.strip_prefix(&format!("{key}: ")).unwrap_or(&e);
            InvalidInput(format!("--set {}: {what}", flag.key))
        })?;
        builder = builder
            .set_override(key.as_str(), flag.value.as_str())
            .map_err(|e| InvalidInput(format!("--set {}: {e}", flag.key)))?;
        sources.flags.insert(key);
    }

    // Each layer passed alone, so the merge only fails on a combination, which is reported
    // as it comes.
    let merged: FileConfig = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| InvalidInput(format!("configuration: {e}")))?;
    let mut config = merged
        .into_config(&sources)
        .map_err(|KeyError { key, reason }| {
            InvalidInput(format!("{}: {reason}", sources.locate(&key)))
        })?;
    config.path = sources.file.clone();
    Ok(config)
}

/// The environment layer over `vars` (canonical names), as the `config` crate reads it:
/// prefix `AFS`, levels separated by `__`, values as text (converted to each key's type).
fn env_layer(vars: HashMap<String, String>) -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
        .prefix_separator("_")
        .separator(ENV_SEPARATOR)
        .source(Some(vars))
}

/// Checks one variable's layer on its own.
fn check_layer(layer: config::Environment, key: &str) -> Result<(), String> {
    check_builder(config::Config::builder().add_source(layer), key)
}

/// Deserializes a layer holding the one value of `key`, and explains a failure.
fn check_builder(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    key: &str,
) -> Result<(), String> {
    match builder
        .build()
        .and_then(config::Config::try_deserialize::<FileConfig>)
    {
        Ok(_) => Ok(()),
        Err(err) => Err(explain(&err, key)),
    }
}

/// A `config` crate error about the one value of `key`, as `KEY: what is wrong`.
fn explain(err: &config::ConfigError, key: &str) -> String {
    let mut inner = err;
    while let config::ConfigError::At { error, .. } = inner {
        inner = error;
    }
    match inner {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("{key}: invalid type: {unexpected}, expected {expected}"),
        config::ConfigError::Message(message) => {
            if let Some(rest) = message.strip_prefix("unknown field `") {
                let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
                let expected = expected.trim_start_matches(',').trim();
                let unknown = key_through(key, name);
                return if expected.is_empty() {
                    format!("unknown key {unknown}")
                } else {
                    format!("unknown key {unknown} ({expected})")
                };
            }
            format!("{key}: {message}")
        }
        other => format!("{key}: {other}"),
    }
}

/// The part of `key` up to and including the segment `name`, e.g. `trigger.bogus` for
/// `trigger.bogus.x` and `bogus`; `key` itself when `name` is not one of its segments.
fn key_through(key: &str, name: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.iter().position(|p| *p == name) {
        Some(i) => parts[..=i].join("."),
        None => key.to_string(),
    }
}

/// Folds the file's `[retrain]` (the old name of `[trainer]`) into `[trainer]`: the TOML text
/// with only `[trainer]`, and the keys that came from `[retrain]`. A key in both is an error.
fn fold_legacy(text: &str) -> Result<(String, BTreeSet<String>), String> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut legacy = BTreeSet::new();
    if let Some(old) = table.remove("retrain") {
        let toml::Value::Table(old) = old else {
            return Err("retrain: expected a table".into());
        };
        let trainer = table
            .entry("trainer")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(trainer) = trainer else {
            return Err("trainer: expected a table".into());
        };
        for (key, value) in old {
            if trainer.contains_key(&key) {
                return Err(format!(
                    "retrain.{key} and trainer.{key} are both set ([retrain] is the old name \
                     of [trainer]); keep one"
                ));
            }
            legacy.insert(format!("trainer.{key}"));
            trainer.insert(key, value);
        }
    }
    let folded = toml::to_string(&table).map_err(|e| e.to_string())?;
    Ok((folded, legacy))
}

impl Config {
    /// How a key is named in messages of the commands: `generator.min_quality_score in
    /// afs.toml`, `trigger.cooldown_hours (from AFS_TRIGGER__COOLDOWN_HOURS)`.
    pub(crate) fn key_name(&self, key: &str) -> String {
        self.sources.key_name(key)
    }

    /// The store settings for the database at `db`.
    pub(crate) fn store_config(&self, db: &Path) -> crate::any_store::StoreConfig {
        use crate::any_store::StoreConfig;
        if crate::any_store::is_server(db) {
            let mut config = afs_store_postgres::PgConfig::new(db.to_string_lossy());
            config.max_field_bytes = self.store.max_field_bytes;
            config.pool_size = self.store.pool_size;
            config.connect_timeout = self.store.busy_timeout;
            // `normal` logs without waiting for the server's flush, as SQLite's `normal`
            // logs without an fsync per commit; `full` waits for it.
            config.fast_log_commits = self.store.synchronous == Synchronous::Normal;
            return StoreConfig::Postgres(config);
        }
        StoreConfig::Sqlite(SqliteConfig {
            path: db.to_path_buf(),
            ..self.store.clone()
        })
    }

    /// The bearer tokens of `[serve]`: `tokens`, then the lines of `token_file` (blank
    /// lines and lines starting with `#` skipped). An unreadable file is an I/O error, an
    /// empty one an invalid input; both name the key and where it came from.
    pub(crate) fn serve_tokens(&self) -> anyhow::Result<Vec<String>> {
        let mut tokens = self.serve.tokens.clone();
        if let Some(path) = &self.serve.token_file {
            let key = self.key_name("serve.token_file");
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{key}: cannot read {}", path.display()))?;
            let before = tokens.len();
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_string),
            );
            if tokens.len() == before {
                return Err(InvalidInput(format!(
                    "{key}: {} holds no token (one a line)",
                    path.display()
                ))
                .into());
            }
        }
        Ok(tokens)
    }

    /// The loop's settings: `[loop]`, `[trigger]`, `[generator]`, `[abtest]`, `[trainer]`.
    pub(crate) fn loop_config(&self) -> LoopConfig {
        let l = &self.loop_settings;
        LoopConfig {
            check_interval: l.check_interval,
            enable_ab_testing: l.enable_ab_testing,
            enable_auto_promotion: l.enable_auto_promotion,
            trigger: self.trigger.clone(),
            generator: self.generator.clone(),
            abtest: self.abtest.clone(),
            retrainer: self.retrain.retrainer(),
            eval_gate: l.eval_cmd.as_ref().map(|command| EvalGate {
                command: command.clone(),
                timeout: l.eval_timeout,
            }),
            training_window: l.training_window,
            initial_champion: l
                .champion
                .as_ref()
                .zip(l.champion_path.as_ref())
                .map(|(name, path)| NewModelVersion::new(name, path)),
            model_stem: l.model_stem.clone(),
        }
    }

    /// Checks `loop_config` (built from this configuration, maybe changed by flags) as the
    /// loop will, naming a bad key with where it came from.
    pub(crate) fn check_loop(&self, loop_config: &LoopConfig) -> Result<(), InvalidInput> {
        match loop_config.validate() {
            Ok(()) => Ok(()),
            Err(LoopError::InvalidConfig { key, reason }) => {
                let key = loop_key(&key);
                Err(InvalidInput(format!(
                    "{}: {reason}",
                    self.sources.locate(&key)
                )))
            }
            Err(other) => Err(InvalidInput(other.to_string())),
        }
    }
}

/// The key of the file that a [`LoopConfig::validate`] key is set by.
fn loop_key(key: &str) -> String {
    if let Some(field) = key.strip_prefix("generator.") {
        return generator_key(field);
    }
    if let Some(field) = key.strip_prefix("retrain.") {
        return format!("trainer.{field}");
    }
    match key {
        "loop.eval_timeout" => "loop.eval_timeout_secs".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod schema_docs_tests;
#[cfg(test)]
mod tests;
