//! The effective configuration written out (`afs config show`): every key of every section
//! with its value, in the file's own format, so the output is itself a valid config file.
//!
//! Each section is serialised as it is declared (its serde keys are the file's): the
//! libraries' written forms and the CLI's own `[loop]`, `[trainer]` and `[serve]`.

use afs_abtest::AbTestSettings;
use afs_datagen::GeneratorSettings;
use afs_store_sqlite::SqliteConfig;
use afs_trigger::TriggerConfig;
use serde::Serialize;

use super::{Config, LoopSettings, RetrainSettings, ServeSettings};

#[derive(Serialize)]
struct Shown<'a> {
    store: &'a SqliteConfig,
    trigger: &'a TriggerConfig,
    generator: GeneratorSettings,
    abtest: AbTestSettings,
    #[serde(rename = "loop")]
    looping: &'a LoopSettings,
    trainer: &'a RetrainSettings,
    /// `[serve]`, without its tokens (secrets: `to_toml` says in a comment how many are set).
    serve: &'a ServeSettings,
}

fn shown(config: &Config) -> Shown<'_> {
    Shown {
        store: &config.store,
        trigger: &config.trigger,
        generator: GeneratorSettings::from((&config.generator, &config.near_dedupe)),
        abtest: AbTestSettings::from(&config.abtest),
        looping: &config.loop_settings,
        trainer: &config.retrain,
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
