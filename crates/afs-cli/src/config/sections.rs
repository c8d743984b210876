//! The config file's schema, section by section (the serde structs every layer is read
//! into), and its mapping onto the libraries' configs with range checks naming the key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use afs_abtest::{AbTestError, AbTestSettings};
use afs_datagen::{DatagenError, GeneratorConfig, GeneratorSettings};
use afs_store::StoreError;
use afs_store_sqlite::SqliteConfig;
use afs_trigger::{TriggerConfig, TriggerError};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use super::{Config, LoopSettings, RetrainSettings, ServeSettings, Sources};
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
/// `[store]`, `[trigger]`, `[abtest]` and `[generator]` are the libraries' own written forms
/// ([`SqliteConfig`], [`TriggerConfig`], [`AbTestSettings`], [`GeneratorSettings`]),
/// `[loop]`, `[serve]` and `[trainer]` are [`LoopSettings`], [`ServeSettings`] and
/// [`RetrainSettings`], each declared once with its serde keys and defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    store: SqliteConfig,
    #[serde(default)]
    trigger: TriggerConfig,
    #[serde(default)]
    generator: GeneratorSettings,
    #[serde(default)]
    abtest: AbTestSettings,
    #[serde(default, rename = "loop")]
    looping: LoopSettings,
    #[serde(default)]
    trainer: RetrainSettings,
    /// The old name of `[trainer]`, read so that a file's own keys are checked with their
    /// lines. It is folded into `trainer` before the layers are merged (see
    /// `super::fold_legacy`), so after that it is never set.
    #[serde(default, rename = "retrain")]
    _retrain: RetrainSettings,
    #[serde(default)]
    serve: ServeSettings,
}

/// `serve.tokens` (and the other lists of `[serve]`: `allowed_hosts`, `allowed_origins`):
/// an array of strings in a file, or a comma-separated list in an environment variable or
/// `--set` (as `AFS_TOKENS`); for `#[serde(deserialize_with)]`. Empty parts of text are kept,
/// so that they are refused with the key named.
pub(super) fn text_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings (or, as text, a comma-separated list)")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',').map(|t| t.trim().to_string()).collect())
        }
    }

    deserializer.deserialize_any(ListVisitor)
}

/// `serve.addr`: `HOST:PORT` with an IP address; for `#[serde(with)]`.
pub(super) mod socket_addr_text {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub(crate) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.trim().parse().map_err(|_| {
            de::Error::custom(format!(
                "{text:?} is not HOST:PORT with an IP address (e.g. 127.0.0.1:8080)"
            ))
        })
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

        let format_given = self.generator.format.is_some();
        let (mut generator, near_dedupe) = self.generator.into_config();
        generator.existing = generator.existing.map(|p| resolve("generator.existing", p));
        config.near_dedupe = near_dedupe;
        config.generator = generator;
        check_generator(&config.generator, &config.near_dedupe, format_given)?;

        config.retrain = self.trainer.checked(&resolve)?;

        config.abtest = self.abtest.into_config().map_err(|err| match err {
            AbTestError::InvalidConfig { field, reason } => {
                KeyError::new(format!("abtest.{field}"), reason)
            }
            other => KeyError::new("abtest", other.to_string()),
        })?;
        self.looping.validate()?;
        config.loop_settings = self.looping;

        config.serve = self.serve.checked()?;
        config.serve.token_file = config
            .serve
            .token_file
            .take()
            .map(|p| resolve("serve.token_file", p));
        Ok(config)
    }
}

/// Checks the generator's settings of these layers, naming the key.
///
/// Validated with near-dedupe on, so that a bad threshold is reported even while near-dedupe
/// is off (a flag may turn it on), and with a stand-in existing file when none is set: `afs
/// generate --existing FILE` may supply the file that `rehearsal_ratio` needs, and the
/// command checks that combination itself. The shape is checked against the format only
/// when these layers set the format as well: `--format` may choose one that has the shape.
fn check_generator(
    generator: &GeneratorConfig,
    near_dedupe: &afs_datagen::NearDedupeConfig,
    format_given: bool,
) -> Result<(), KeyError> {
    let probe = GeneratorConfig {
        near_dedupe: Some(near_dedupe.clone()),
        shape: generator.shape.filter(|_| format_given),
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
    })
}

impl RetrainSettings {
    /// These settings, checked; a relative `output_dir` from the file (or the default one,
    /// when a file is read) is under the file's directory (`resolve`).
    fn checked(self, resolve: &dyn Fn(&str, PathBuf) -> PathBuf) -> Result<Self, KeyError> {
        if self
            .train_cmd
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(KeyError::new("trainer.train_cmd", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(KeyError::new("trainer.timeout_secs", "must be at least 1"));
        }
        if self.min_samples_for_retrain == 0 {
            return Err(KeyError::new(
                "trainer.min_samples_for_retrain",
                "must be at least 1",
            ));
        }
        if self.output_dir.as_os_str().is_empty() {
            return Err(KeyError::new("trainer.output_dir", "must not be empty"));
        }
        check_file_name(&self.dataset_name)
            .map_err(|reason| KeyError::new("trainer.dataset_name", reason))?;
        Ok(RetrainSettings {
            output_dir: resolve("trainer.output_dir", self.output_dir),
            ..self
        })
    }
}

impl ServeSettings {
    /// The settings of `[serve]`, checked, with `allowed_hosts` and `allowed_origins` in
    /// their normal form (`token_file` as written; the caller resolves it against the file's
    /// directory, and `afs serve` reads it).
    fn checked(mut self) -> Result<ServeSettings, KeyError> {
        if let Some(i) = self.tokens.iter().position(|t| t.trim().is_empty()) {
            return Err(KeyError::new(
                "serve.tokens",
                format!("token {} of {} is empty", i + 1, self.tokens.len()),
            ));
        }
        if self
            .token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(KeyError::new("serve.token_file", "must not be empty"));
        }
        if self.max_body_bytes == 0 {
            return Err(KeyError::new("serve.max_body_bytes", "must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(KeyError::new("serve.max_batch", "must be at least 1"));
        }
        self.allowed_hosts = self
            .allowed_hosts
            .iter()
            .map(|h| crate::serve::parse_allowed_host(h))
            .collect::<Result<_, _>>()
            .map_err(|reason| KeyError::new("serve.allowed_hosts", reason))?;
        self.allowed_origins = self
            .allowed_origins
            .iter()
            .map(|o| crate::serve::parse_allowed_origin(o))
            .collect::<Result<_, _>>()
            .map_err(|reason| KeyError::new("serve.allowed_origins", reason))?;
        let limit = crate::serve::MAX_CONNECTIONS_LIMIT;
        if !(1..=limit).contains(&self.max_connections) {
            return Err(KeyError::new(
                "serve.max_connections",
                format!("{} is not within 1..={limit}", self.max_connections),
            ));
        }
        for (key, value) in [
            ("serve.header_timeout_secs", self.header_timeout),
            ("serve.body_timeout_secs", self.body_timeout),
            ("serve.write_timeout_secs", self.write_timeout),
        ] {
            if value.is_zero() {
                return Err(KeyError::new(key, "must be at least 1"));
            }
        }
        Ok(self)
    }
}

impl LoopSettings {
    /// Checks the settings of `[loop]`; an error names the key.
    fn validate(&self) -> Result<(), KeyError> {
        let not_blank = |key: &str, value: &Option<String>| match value {
            Some(v) if v.trim().is_empty() => Err(KeyError::new(key, "must not be empty")),
            _ => Ok(()),
        };
        not_blank("loop.eval_cmd", &self.eval_cmd)?;
        if self.eval_timeout.is_zero() {
            return Err(KeyError::new(
                "loop.eval_timeout_secs",
                "must be at least 1",
            ));
        }
        not_blank("loop.champion", &self.champion)?;
        not_blank("loop.champion_path", &self.champion_path)?;
        match (&self.champion, &self.champion_path) {
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
        if let Some(stem) = &self.model_stem {
            if stem.trim().is_empty() || stem.chars().any(char::is_whitespace) {
                return Err(KeyError::new(
                    "loop.model_stem",
                    format!("{stem:?} must be non-empty and without whitespace"),
                ));
            }
        }
        Ok(())
    }
}

/// A duration written as text in the largest whole unit (`30m`), read from seconds or text
/// (see [`DurationSetting`]); for `#[serde(with)]`.
pub(super) mod duration_text {
    use super::DurationSetting;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time_arg::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        DurationSetting::deserialize(d).map(|DurationSetting(d)| d)
    }
}

/// [`duration_text`] for an optional duration (absent when `None`).
pub(super) mod optional_duration_text {
    use super::DurationSetting;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        DurationSetting::deserialize(d).map(|DurationSetting(d)| Some(d))
    }
}

/// A duration written as whole seconds (keys ending in `_secs`); for `#[serde(with)]`.
pub(super) mod whole_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
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
