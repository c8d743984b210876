//! The trainer of the commands that train (`afs retrain`, `afs loop`, `afs serve
//! --with-loop`): one place turns their flags and the `[trainer]` section into a
//! [`CommandTrainer`], so they accept and refuse the same things with the same words.

use std::time::Duration;

use afs_trigger::CommandTrainer;

use crate::config::Config;
use crate::exit::{InvalidInput, Usage};

/// The trainer command `cmd` (`--train-cmd`) or else `train_cmd` of `[trainer]`, stopped
/// after `timeout_secs` or else the section's `timeout_secs`. `timeout_flag` is the name of
/// the command's timeout flag, for the message that refuses 0.
pub(crate) fn from_flags(
    cmd: Option<&str>,
    timeout_secs: Option<u64>,
    timeout_flag: &str,
    config: &Config,
) -> anyhow::Result<CommandTrainer> {
    let (command, source) = match (cmd, &config.retrain.train_cmd) {
        (Some(cmd), _) if cmd.trim().is_empty() => {
            return Err(InvalidInput("invalid --train-cmd: must not be empty".into()).into())
        }
        (Some(cmd), _) => (cmd.to_string(), "--train-cmd".to_string()),
        (None, Some(cmd)) => (cmd.clone(), config.key_name("trainer.train_cmd")),
        (None, None) => {
            return Err(Usage(
                "no trainer command: pass --train-cmd CMD, or set train_cmd in the [trainer] \
                 section of the config file (or AFS_TRAINER__TRAIN_CMD)"
                    .into(),
            )
            .into())
        }
    };
    if timeout_secs == Some(0) {
        return Err(InvalidInput(format!("invalid {timeout_flag}: must be > 0")).into());
    }
    let timeout = timeout_secs.map_or(config.retrain.timeout, Duration::from_secs);
    let trainer = CommandTrainer::shell(command, timeout);
    // A template the shell would get wrong is refused before any data is generated.
    trainer
        .validate()
        .map_err(|e| InvalidInput(format!("invalid {source}: {e}")))?;
    Ok(trainer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(result: anyhow::Result<CommandTrainer>) -> String {
        result.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn the_trainer_comes_from_the_flag_or_the_file() {
        let mut config = Config::default();
        let flag = "--train-timeout";
        assert!(refusal(from_flags(None, None, flag, &config)).contains("no trainer command"));
        assert!(refusal(from_flags(Some("  "), None, flag, &config)).contains("must not be empty"));
        assert_eq!(
            refusal(from_flags(Some("true"), Some(0), flag, &config)),
            "invalid --train-timeout: must be > 0"
        );
        assert!(from_flags(Some("true"), None, flag, &config).is_ok());
        config.retrain.train_cmd = Some("python train.py {data}".into());
        assert!(from_flags(None, Some(60), flag, &config).is_ok());
        assert_eq!(
            refusal(from_flags(Some("x '{data}'"), None, flag, &config)),
            "invalid --train-cmd: placeholder {data} is inside single quotes, where the shell \
             would not expand it; remove the quotes: afs quotes values itself"
        );
        config.retrain.train_cmd = Some("x {model_path}".into());
        assert!(refusal(from_flags(None, None, flag, &config)).contains("train_cmd"));
    }
}
