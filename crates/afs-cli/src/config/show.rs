//! The effective configuration written out (`afs config show`): every key of every section
//! with its value, in the file's own format, so the output is itself a valid config file.
//!
//! `[store]`, `[trigger]` and `[abtest]` are the libraries' written forms serialised as they
//! are (their serde keys are the file's); the other sections are still mirrored here.

use afs_abtest::AbTestSettings;
use afs_datagen::GeneratorSettings;
use afs_store_sqlite::SqliteConfig;
use afs_trigger::TriggerConfig;
use serde::Serialize;

use super::{Config, LoopSettings, ServeSettings};

#[derive(Serialize)]
struct Shown<'a> {
    store: &'a SqliteConfig,
    trigger: &'a TriggerConfig,
    generator: GeneratorSettings,
    abtest: AbTestSettings,
    #[serde(rename = "loop")]
    looping: &'a LoopSettings,
    trainer: ShownTrainer,
    /// `[serve]`, without its tokens (secrets: `to_toml` says in a comment how many are set).
    serve: &'a ServeSettings,
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
    let r = &config.retrain;
    Shown {
        store: &config.store,
        trigger: &config.trigger,
        generator: GeneratorSettings::from((&config.generator, &config.near_dedupe)),
        abtest: AbTestSettings::from(&config.abtest),
        looping: &config.loop_settings,
        trainer: ShownTrainer {
            train_cmd: r.train_cmd.clone(),
            timeout_secs: r.timeout.as_secs(),
            min_samples_for_retrain: r.retrainer.min_samples_for_retrain,
            output_dir: r.retrainer.output_dir.display().to_string(),
            dataset_name: r.retrainer.dataset_name.clone(),
        },
        serve: &config.serve,
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
