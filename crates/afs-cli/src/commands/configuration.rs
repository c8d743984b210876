//! `afs config show` and `afs config check`: the effective configuration, and its check.

use serde_json::json;

use crate::cli::{ConfigArgs, ConfigCommand, GlobalArgs};
use crate::config;
use crate::output::{print_json, print_line};

/// Runs `afs config show` or `afs config check`.
pub(crate) fn run(global: &GlobalArgs, args: &ConfigArgs) -> anyhow::Result<()> {
    // An invalid layer fails here, with exit code 3 and the key named.
    let config = config::load(global)?;
    match args.command {
        ConfigCommand::Show => {
            if global.json {
                print_json(&config::to_json(&config))
            } else {
                print_line(config::to_toml(&config)?.trim_end())
            }
        }
        ConfigCommand::Check => {
            // What the loop checks on top of each key: combinations of keys.
            config.check_loop(&config.loop_config())?;
            // The command templates, as `afs retrain` and `afs loop` check them at startup.
            if config.retrain.train_cmd.is_some() {
                crate::trainer::from_flags(None, None, "", &config)?;
            }
            if let Some(cmd) = &config.loop_settings.eval_cmd {
                afs_trigger::CommandTemplate::parse(
                    cmd,
                    afs_trigger::Placeholder::EVAL,
                    "evaluation command",
                )
                .map_err(|e| {
                    crate::exit::InvalidInput(format!(
                        "invalid {}: {e}",
                        config.key_name("loop.eval_cmd")
                    ))
                })?;
            }
            let layers = config.sources.describe();
            if global.json {
                return print_json(&json!({ "ok": true, "layers": layers }));
            }
            if layers.is_empty() {
                print_line("ok (no config file, environment variable or --set flag: all defaults)")
            } else {
                print_line(&format!("ok ({})", layers.join(", ")))
            }
        }
    }
}
