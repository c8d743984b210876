//! Reading an existing training file back: per-line format detection, the keys that new
//! samples are deduplicated against, and the seeded choice of rehearsal samples.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use afs_store::{Message, Role};

use crate::config::{Format, PLAIN_SEPARATOR};
use crate::error::DatagenError;
use crate::format::{Body, Example, Metadata};
use crate::key::{KeyBuilder, KeySet};
use crate::rng::SplitMix64;

/// At most this many malformed lines are listed in a report (all are counted).
pub const MAX_REPORTED_MALFORMED: usize = 100;

/// A line of the existing file that could not be read as a training sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MalformedLine {
    /// 1-based line number.
    pub line: u64,
    /// Why, as a lowercase fragment.
    pub reason: String,
}

/// What was found in the existing file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExistingReport {
    /// Lines read (including blank and malformed ones).
    pub lines: u64,
    /// Empty or whitespace-only lines, skipped.
    pub blank_lines: u64,
    /// Lines read as a sample of some supported format.
    pub valid: u64,
    /// Lines that are not a sample of any supported format; never dropped silently.
    pub malformed: u64,
    /// The first [`MAX_REPORTED_MALFORMED`] malformed lines, with the reason for each.
    pub malformed_lines: Vec<MalformedLine>,
    /// Valid lines the output format cannot take as rehearsal samples (for instance a
    /// `chatml` line when writing `dpo`, which needs a rejected response). They still count
    /// for deduplication.
    pub incompatible: u64,
    /// Valid lines the output format can take: the pool rehearsal samples are drawn from.
    pub eligible: u64,
}

/// One sample read back from a training file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExistingSample {
    /// A supervised example (`chatml`, `sharegpt`, `alpaca`, `completion`). For multi-turn
    /// conversations, the last user message and the last assistant message, and (from
    /// `messages` and `conversations` lines that end with the assistant) the turns before
    /// that answer, without the system message, in `turns`.
    Pair {
        system: Option<String>,
        prompt: String,
        response: String,
        turns: Option<Vec<Message>>,
    },
    /// A `text` line, which has no prompt/response split.
    Text(String),
    /// A `dpo` line.
    Preference {
        system: Option<String>,
        prompt: String,
        chosen: String,
        rejected: String,
    },
    /// A `kto` line.
    Labeled {
        system: Option<String>,
        prompt: String,
        completion: String,
        label: bool,
    },
}

impl ExistingSample {
    /// Calls `add` with every exact key this sample occupies: its query/response pairs
    /// (both responses of a preference pair), or its whole text.
    pub(crate) fn keys(&self, kb: &mut KeyBuilder, mut add: impl FnMut(crate::key::Key)) {
        match self {
            ExistingSample::Pair {
                system,
                prompt,
                response,
                turns,
            } => {
                // A conversation keys as the store keys a record of it: every turn, with the
                // system turn (which may have been the record's own) and without it; only a
                // one-exchange line may also stand for a single-turn record.
                if turns.is_none() {
                    add(kb.pair(prompt, response));
                }
                let user = [Message::new(Role::User, prompt.as_str())];
                let prompt_turns = turns.as_deref().unwrap_or(&user);
                if turns.is_some() {
                    add(kb.record(prompt, response, Some(prompt_turns)));
                }
                if let Some(system) = system {
                    let mut with_system = vec![Message::new(Role::System, system.as_str())];
                    with_system.extend_from_slice(prompt_turns);
                    add(kb.record(prompt, response, Some(&with_system)));
                }
            }
            ExistingSample::Text(text) => add(kb.text(text)),
            ExistingSample::Preference {
                prompt,
                chosen,
                rejected,
                ..
            } => {
                add(kb.pair(prompt, chosen));
                add(kb.pair(prompt, rejected));
            }
            ExistingSample::Labeled {
                prompt, completion, ..
            } => add(kb.pair(prompt, completion)),
        }
    }

    /// Whether `format` can write this sample as a rehearsal line. Supervised formats
    /// take pairs, the chosen side of preference pairs and positively labelled lines;
    /// `text` also takes `text` lines; `dpo` and `openai-dpo` take only preference pairs
    /// and `kto` only labelled lines. The shape of the line does not matter: the output's
    /// formatter writes every sample in the output's shape.
    pub(crate) fn fits(&self, format: Format) -> bool {
        match format {
            Format::Dpo | Format::OpenAiDpo => matches!(self, ExistingSample::Preference { .. }),
            Format::Kto => matches!(self, ExistingSample::Labeled { .. }),
            Format::Text => !matches!(self, ExistingSample::Labeled { label: false, .. }),
            _ => !matches!(
                self,
                ExistingSample::Text(_) | ExistingSample::Labeled { label: false, .. }
            ),
        }
    }

    /// The sample as an example, marked with its line number. A `text` line becomes a
    /// prompt with an empty response, which the `text` formatter writes unchanged.
    pub(crate) fn example(&self, line: u64) -> Example<'_> {
        let metadata = Metadata {
            existing_line: Some(line),
            ..Metadata::default()
        };
        match self {
            ExistingSample::Pair {
                system,
                prompt,
                response,
                turns,
            } => Example {
                turns: turns.as_deref(),
                system: system.as_deref(),
                prompt,
                body: Body::Response(response),
                metadata,
            },
            ExistingSample::Text(text) => Example {
                turns: None,
                system: None,
                prompt: text,
                body: Body::Response(""),
                metadata,
            },
            ExistingSample::Preference {
                system,
                prompt,
                chosen,
                rejected,
            } => Example {
                turns: None,
                system: system.as_deref(),
                prompt,
                body: Body::Preference { chosen, rejected },
                metadata,
            },
            ExistingSample::Labeled {
                system,
                prompt,
                completion,
                label,
            } => Example {
                turns: None,
                system: system.as_deref(),
                prompt,
                body: Body::Labeled {
                    completion,
                    label: *label,
                },
                metadata,
            },
        }
    }

    /// Applies `f` to every text field (for redaction of rehearsal samples).
    pub(crate) fn map_texts(&mut self, mut f: impl FnMut(&mut String)) {
        match self {
            ExistingSample::Pair {
                system,
                prompt,
                response,
                turns,
            } => {
                system.iter_mut().for_each(&mut f);
                f(prompt);
                f(response);
                for turn in turns.iter_mut().flatten() {
                    f(&mut turn.content);
                }
            }
            ExistingSample::Text(text) => f(text),
            ExistingSample::Preference {
                system,
                prompt,
                chosen,
                rejected,
            } => {
                system.iter_mut().for_each(&mut f);
                f(prompt);
                f(chosen);
                f(rejected);
            }
            ExistingSample::Labeled {
                system,
                prompt,
                completion,
                ..
            } => {
                system.iter_mut().for_each(&mut f);
                f(prompt);
                f(completion);
            }
        }
    }
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field {key} is not a string")),
        None => Err(format!("field {key} is missing")),
    }
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field {key} is not a string")),
    }
}

/// The system prompt, last user message and last assistant message of a message list
/// (`role`/`content` or ShareGPT's `from`/`value`).
#[derive(Default)]
struct Turns {
    system: Option<String>,
    user: Option<String>,
    assistant: Option<String>,
    /// Every user, assistant and tool turn, in order.
    all: Vec<Message>,
}

impl Turns {
    /// The turns before the final answer of a multi-turn conversation: `None` when the
    /// conversation is one user turn and its answer, or does not end with the assistant.
    fn prompt_turns(&self) -> Option<Vec<Message>> {
        let (last, before) = self.all.split_last()?;
        let single = matches!(before, [only] if only.role == Role::User);
        (last.role == Role::Assistant && !single && !before.is_empty()).then(|| before.to_vec())
    }
}

fn turns(field: &str, value: &Value) -> Result<Turns, String> {
    let Value::Array(items) = value else {
        return Err(format!("field {field} is not a list"));
    };
    let mut turns = Turns::default();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(format!("{field}[{i}] is not an object"));
        };
        let (role, content) = match (
            m.get("role"),
            m.get("content"),
            m.get("from"),
            m.get("value"),
        ) {
            (Some(Value::String(r)), Some(Value::String(c)), _, _) => (r.as_str(), c),
            (_, _, Some(Value::String(r)), Some(Value::String(c))) => (r.as_str(), c),
            _ => {
                return Err(format!(
                    "{field}[{i}] has no string role/content or from/value"
                ))
            }
        };
        let known = match role {
            "user" | "human" => Some(Role::User),
            "assistant" | "gpt" | "model" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            // The system message is kept apart (a later one is ignored, as below).
            _ => None,
        };
        if let Some(known) = known {
            turns.all.push(Message::new(known, content.clone()));
        }
        let slot = match role {
            "system" => &mut turns.system,
            "user" | "human" => &mut turns.user,
            "assistant" | "gpt" | "model" => &mut turns.assistant,
            // Tool calls and other roles carry no prompt or response of their own.
            _ => continue,
        };
        if role == "system" && slot.is_some() {
            continue;
        }
        *slot = Some(content.clone());
    }
    Ok(turns)
}

/// A plain prompt read back: afs's template (see [`crate::Shape`]) ends it with
/// [`PLAIN_SEPARATOR`], which is taken off, and starts it with the system prompt when there
/// is one; `system`, the run's configured system prompt, is split off when it starts the
/// prompt, so that the sample's keys are those of the same record written now.
fn split_plain(prompt: &str, system: Option<&str>) -> (Option<String>, String) {
    let Some(body) = prompt.strip_suffix(PLAIN_SEPARATOR) else {
        return (None, prompt.to_string());
    };
    if let Some(system) = system {
        if let Some(rest) = body
            .strip_prefix(system)
            .and_then(|rest| rest.strip_prefix(PLAIN_SEPARATOR))
        {
            return (Some(system.to_string()), rest.to_string());
        }
    }
    (None, body.to_string())
}

/// A TRL prompt: a string, or a list of system and user messages.
fn prompt_of(
    obj: &Map<String, Value>,
    system: Option<&str>,
) -> Result<(Option<String>, String), String> {
    match obj.get("prompt") {
        Some(Value::String(s)) => {
            let (from_prompt, prompt) = split_plain(s, system);
            Ok((optional_string(obj, "system")?.or(from_prompt), prompt))
        }
        Some(v @ Value::Array(_)) => {
            let t = turns("prompt", v)?;
            Ok((t.system, t.user.ok_or("field prompt has no user message")?))
        }
        Some(_) => Err("field prompt is not a string or a list of messages".into()),
        None => Err("field prompt is missing".into()),
    }
}

/// A TRL completion: a string, or a list whose last assistant message is the completion.
fn reply_of(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ Value::Array(_)) => turns(key, v)?
            .assistant
            .ok_or_else(|| format!("field {key} has no assistant message")),
        Some(_) => Err(format!("field {key} is not a string or a list of messages")),
        None => Err(format!("field {key} is missing")),
    }
}

/// Reads one line of a training file in any supported format, detected by its keys.
/// `system` is the run's system prompt (see [`split_plain`]).
pub(crate) fn parse_line(line: &str, system: Option<&str>) -> Result<ExistingSample, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid json: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a json object".into());
    };
    if let Some(messages) = obj.get("messages") {
        let t = turns("messages", messages)?;
        return Ok(ExistingSample::Pair {
            turns: t.prompt_turns(),
            system: t.system,
            prompt: t.user.ok_or("messages has no user message")?,
            response: t.assistant.ok_or("messages has no assistant message")?,
        });
    }
    if let Some(conversations) = obj.get("conversations") {
        let t = turns("conversations", conversations)?;
        return Ok(ExistingSample::Pair {
            turns: t.prompt_turns(),
            system: optional_string(&obj, "system")?.or(t.system),
            prompt: t.user.ok_or("conversations has no human turn")?,
            response: t.assistant.ok_or("conversations has no gpt turn")?,
        });
    }
    if obj.contains_key("instruction") {
        let instruction = string_field(&obj, "instruction")?;
        let input = optional_string(&obj, "input")?.unwrap_or_default();
        let prompt = if input.trim().is_empty() {
            instruction
        } else {
            format!("{instruction}\n\n{input}")
        };
        return Ok(ExistingSample::Pair {
            system: optional_string(&obj, "system")?,
            prompt,
            response: string_field(&obj, "output")?,
            turns: None,
        });
    }
    if let Some(input) = obj.get("input").filter(|v| v.is_object()) {
        // `openai-dpo`: {"input":{"messages":[..]},"preferred_output":[..],..}.
        let t = turns(
            "input.messages",
            input.get("messages").unwrap_or(&Value::Null),
        )?;
        let output = |key: &str| {
            obj.get(key)
                .ok_or_else(|| format!("field {key} is missing"))
                .and_then(|v| turns(key, v))?
                .assistant
                .ok_or_else(|| format!("field {key} has no assistant message"))
        };
        return Ok(ExistingSample::Preference {
            system: t.system,
            prompt: t.user.ok_or("input.messages has no user message")?,
            chosen: output("preferred_output")?,
            rejected: output("non_preferred_output")?,
        });
    }
    if obj.contains_key("prompt") {
        let (system, prompt) = prompt_of(&obj, system)?;
        if obj.contains_key("chosen") || obj.contains_key("rejected") {
            return Ok(ExistingSample::Preference {
                system,
                prompt,
                chosen: reply_of(&obj, "chosen")?,
                rejected: reply_of(&obj, "rejected")?,
            });
        }
        let completion = reply_of(&obj, "completion")?;
        return match obj.get("label") {
            None => Ok(ExistingSample::Pair {
                system,
                prompt,
                response: completion,
                turns: None,
            }),
            Some(Value::Bool(label)) => Ok(ExistingSample::Labeled {
                system,
                prompt,
                completion,
                label: *label,
            }),
            Some(_) => Err("field label is not a boolean".into()),
        };
    }
    if obj.contains_key("text") {
        return Ok(ExistingSample::Text(string_field(&obj, "text")?));
    }
    Err("no known format's keys (messages, conversations, instruction, prompt or text)".into())
}

/// A line as read from the file: its text, or why it is not text.
enum RawLine<'a> {
    Blank,
    Text(&'a str),
    NotUtf8,
}

/// Calls `f` with each line's 1-based number and content; I/O errors name the file.
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(u64, RawLine<'_>) -> Result<(), DatagenError>,
) -> Result<(), DatagenError> {
    let file = File::open(path).map_err(|e| DatagenError::io("open existing file", path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DatagenError::io("read existing file", path, e))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let mut bytes = buf.as_slice();
        if number == 1 {
            bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        }
        let raw = match std::str::from_utf8(bytes) {
            Ok(text) if text.trim().is_empty() => RawLine::Blank,
            Ok(text) => RawLine::Text(text.trim_end_matches(['\n', '\r'])),
            Err(_) => RawLine::NotUtf8,
        };
        f(number, raw)?;
    }
}

/// The existing file after the first pass: its keys and what it holds.
#[derive(Debug, Default)]
pub(crate) struct ExistingIndex {
    /// Keys of every valid line (empty when dedupe is off).
    pub(crate) keys: KeySet,
    /// Whether any `text` line was found (new samples are then also checked by their
    /// `text` rendering).
    pub(crate) has_text: bool,
    pub(crate) report: ExistingReport,
}

/// First pass over the existing file: counts, malformed lines, and (with `collect_keys`)
/// the key set. `progress` is called with the number of lines read so far; an error from
/// it ends the pass.
pub(crate) fn index(
    path: &Path,
    format: Format,
    system: Option<&str>,
    collect_keys: bool,
    mut progress: impl FnMut(u64) -> Result<(), DatagenError>,
) -> Result<ExistingIndex, DatagenError> {
    let mut index = ExistingIndex::default();
    let mut kb = KeyBuilder::default();
    for_each_line(path, |number, raw| {
        let report = &mut index.report;
        report.lines = number;
        if number % 8192 == 0 {
            progress(number)?;
        }
        let parsed = match raw {
            RawLine::Blank => {
                report.blank_lines += 1;
                return Ok(());
            }
            RawLine::NotUtf8 => Err("not valid utf-8".to_string()),
            RawLine::Text(text) => parse_line(text, system),
        };
        match parsed {
            Ok(sample) => {
                report.valid += 1;
                if sample.fits(format) {
                    report.eligible += 1;
                } else {
                    report.incompatible += 1;
                }
                index.has_text |= matches!(sample, ExistingSample::Text(_));
                if collect_keys {
                    sample.keys(&mut kb, |k| {
                        index.keys.insert(k);
                    });
                }
            }
            Err(reason) => {
                report.malformed += 1;
                tracing::warn!(file = %path.display(), line = number, %reason, "malformed line in existing training file");
                if report.malformed_lines.len() < MAX_REPORTED_MALFORMED {
                    report.malformed_lines.push(MalformedLine {
                        line: number,
                        reason,
                    });
                }
            }
        }
        Ok(())
    })?;
    progress(index.report.lines)?;
    Ok(index)
}

/// Second pass: chooses exactly `take` of the `eligible` lines that `format` can hold,
/// each subset equally likely (selection sampling, Knuth's algorithm S: line `i` of `n`
/// is taken with probability `(still needed) / (lines left)`), and calls `f` with each in
/// file order. Memory is one line. Fails if the file no longer has `eligible` such lines.
pub(crate) fn choose(
    path: &Path,
    format: Format,
    system: Option<&str>,
    eligible: u64,
    take: u64,
    rng: &mut SplitMix64,
    mut f: impl FnMut(u64, ExistingSample) -> Result<(), DatagenError>,
) -> Result<(), DatagenError> {
    let mut seen = 0u64;
    let mut taken = 0u64;
    for_each_line(path, |number, raw| {
        let RawLine::Text(text) = raw else {
            return Ok(());
        };
        let Ok(sample) = parse_line(text, system) else {
            return Ok(());
        };
        if !sample.fits(format) {
            return Ok(());
        }
        if seen >= eligible {
            return Err(DatagenError::ExistingChanged {
                path: path.to_path_buf(),
                reason: format!("more than {eligible} usable lines on the second read"),
            });
        }
        let left = eligible - seen;
        seen += 1;
        if taken < take && rng.below(left) < take - taken {
            taken += 1;
            f(number, sample)?;
        }
        Ok(())
    })?;
    if seen != eligible {
        return Err(DatagenError::ExistingChanged {
            path: path.to_path_buf(),
            reason: format!("{seen} usable lines on the second read, {eligible} on the first"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(system: Option<&str>, prompt: &str, response: &str) -> ExistingSample {
        ExistingSample::Pair {
            system: system.map(String::from),
            prompt: prompt.into(),
            response: response.into(),
            turns: None,
        }
    }

    fn check(line: &str, expected: Result<ExistingSample, &str>) {
        let got = parse_line(line, None);
        match expected {
            Ok(sample) => assert_eq!(got, Ok(sample), "{line}"),
            Err(fragment) => {
                let reason = got.expect_err(line);
                assert!(
                    reason.contains(fragment),
                    "{line}: {reason:?} lacks {fragment:?}"
                );
            }
        }
    }

    #[test]
    fn detects_every_format() {
        check(
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},{"role":"assistant","content":"r"}],"metadata":{}}"#,
            Ok(pair(Some("s"), "q", "r")),
        );
        check(
            r#"{"messages":[{"role":"user","content":"q1"},{"role":"assistant","content":"r1"},{"role":"user","content":"q2"},{"role":"assistant","content":"r2"}]}"#,
            Ok(ExistingSample::Pair {
                system: None,
                prompt: "q2".into(),
                response: "r2".into(),
                turns: Some(vec![
                    Message::new(Role::User, "q1"),
                    Message::new(Role::Assistant, "r1"),
                    Message::new(Role::User, "q2"),
                ]),
            }),
        );
        check(
            r#"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"r"}],"system":"s"}"#,
            Ok(pair(Some("s"), "q", "r")),
        );
        check(
            r#"{"instruction":"q","input":"","output":"r"}"#,
            Ok(pair(None, "q", "r")),
        );
        check(
            r#"{"instruction":"q","input":"ctx","output":"r","system":"s"}"#,
            Ok(pair(Some("s"), "q\n\nctx", "r")),
        );
        check(
            r#"{"prompt":"q","completion":"r"}"#,
            Ok(pair(None, "q", "r")),
        );
        check(
            r#"{"prompt":[{"role":"system","content":"s"},{"role":"user","content":"q"}],"completion":[{"role":"assistant","content":"r"}]}"#,
            Ok(pair(Some("s"), "q", "r")),
        );
        check(
            r#"{"text":"hello"}"#,
            Ok(ExistingSample::Text("hello".into())),
        );
        // The formats' current forms: sharegpt with its system turn inside, a plain prompt
        // with afs's separator, and OpenAI's preference format.
        check(
            r#"{"conversations":[{"from":"system","value":"s"},{"from":"user","value":"q"},{"from":"assistant","value":"r"}]}"#,
            Ok(pair(Some("s"), "q", "r")),
        );
        check(
            r#"{"prompt":"q\n\n","completion":"r"}"#,
            Ok(pair(None, "q", "r")),
        );
        check(
            r#"{"input":{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":"c"}],"non_preferred_output":[{"role":"assistant","content":"x"}]}"#,
            Ok(ExistingSample::Preference {
                system: Some("s".into()),
                prompt: "q".into(),
                chosen: "c".into(),
                rejected: "x".into(),
            }),
        );
        check(
            r#"{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[]}"#,
            Err("preferred_output has no assistant message"),
        );
        // A plain prompt starting with the run's system prompt gives it back as such, so
        // that the sample's keys are the query's; another system prompt stays in the query.
        let line = r#"{"prompt":"be brief\n\nq\n\n","completion":"r"}"#;
        assert_eq!(
            parse_line(line, Some("be brief")),
            Ok(pair(Some("be brief"), "q", "r"))
        );
        assert_eq!(
            parse_line(line, Some("be long")),
            Ok(pair(None, "be brief\n\nq", "r"))
        );
        check(
            r#"{"prompt":"q","chosen":"c","rejected":"x"}"#,
            Ok(ExistingSample::Preference {
                system: None,
                prompt: "q".into(),
                chosen: "c".into(),
                rejected: "x".into(),
            }),
        );
        check(
            r#"{"prompt":"q","completion":"r","label":false}"#,
            Ok(ExistingSample::Labeled {
                system: None,
                prompt: "q".into(),
                completion: "r".into(),
                label: false,
            }),
        );
    }

    #[test]
    fn malformed_lines_say_why() {
        check("{", Err("invalid json"));
        check("[1,2]", Err("not a json object"));
        check(r#"{"foo":1}"#, Err("no known format"));
        check(
            r#"{"messages":[{"role":"user","content":"q"}]}"#,
            Err("no assistant message"),
        );
        check(r#"{"messages":"q"}"#, Err("field messages is not a list"));
        check(r#"{"messages":[1]}"#, Err("messages[0] is not an object"));
        check(
            r#"{"instruction":"q","output":5}"#,
            Err("field output is not a string"),
        );
        check(r#"{"instruction":"q"}"#, Err("field output is missing"));
        check(
            r#"{"prompt":"q","completion":"r","label":"yes"}"#,
            Err("field label is not a boolean"),
        );
        check(
            r#"{"prompt":"q","chosen":"c"}"#,
            Err("field rejected is missing"),
        );
        check(r#"{"text":null}"#, Err("field text is not a string"));
    }

    fn numbered_file(n: usize) -> tempfile::NamedTempFile {
        let mut text = String::new();
        for i in 1..=n {
            text.push_str(&format!("{{\"prompt\":\"q{i}\",\"completion\":\"r\"}}\n"));
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn chosen(path: &Path, eligible: u64, take: u64, seed: u64) -> Result<Vec<u64>, DatagenError> {
        let mut lines = Vec::new();
        let mut rng = SplitMix64::new(seed);
        choose(
            path,
            Format::Completion,
            None,
            eligible,
            take,
            &mut rng,
            |n, _| {
                lines.push(n);
                Ok(())
            },
        )?;
        Ok(lines)
    }

    #[test]
    fn choice_takes_exactly_k_uniformly_and_reproducibly() {
        let file = numbered_file(10);
        let mut hits = [0u32; 10];
        for seed in 0..3000 {
            let lines = chosen(file.path(), 10, 3, seed).unwrap();
            assert_eq!(lines.len(), 3);
            assert!(lines.windows(2).all(|w| w[0] < w[1]));
            for l in lines {
                hits[l as usize - 1] += 1;
            }
        }
        // Each line is taken with probability 3/10: 900 of 3000, binomial sd about 25.
        assert!(hits.iter().all(|&h| (800..1000).contains(&h)), "{hits:?}");
        assert_eq!(
            chosen(file.path(), 10, 3, 5).unwrap(),
            chosen(file.path(), 10, 3, 5).unwrap()
        );
        assert_eq!(
            chosen(file.path(), 10, 10, 1).unwrap(),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(chosen(file.path(), 10, 0, 1).unwrap().is_empty());
    }

    #[test]
    fn choice_notices_a_changed_file() {
        let file = numbered_file(3);
        assert!(matches!(
            chosen(file.path(), 5, 2, 0),
            Err(DatagenError::ExistingChanged { .. })
        ));
        assert!(matches!(
            chosen(file.path(), 2, 2, 0),
            Err(DatagenError::ExistingChanged { .. })
        ));
    }

    #[test]
    fn index_counts_lines() {
        let file = numbered_file(4);
        let valid = std::fs::read(file.path()).unwrap();
        let mut bytes = "\u{feff}".as_bytes().to_vec();
        bytes.extend_from_slice(&valid);
        bytes.extend_from_slice(b"\n{bad\n\xff\xfe\n");
        std::fs::write(file.path(), bytes).unwrap();
        let mut seen = Vec::new();
        let index = index(file.path(), Format::Text, None, true, |n| {
            seen.push(n);
            Ok(())
        })
        .unwrap();
        let r = &index.report;
        assert_eq!(
            (
                r.lines,
                r.valid,
                r.blank_lines,
                r.malformed,
                r.eligible,
                r.incompatible
            ),
            (7, 4, 1, 2, 4, 0)
        );
        assert_eq!(
            r.malformed_lines.iter().map(|m| m.line).collect::<Vec<_>>(),
            [6, 7]
        );
        assert_eq!(r.malformed_lines[1].reason, "not valid utf-8");
        assert_eq!(index.keys.len(), 4);
        assert_eq!(seen.last(), Some(&7));
    }

    #[test]
    fn formats_take_what_they_can_write() {
        let p = pair(None, "q", "r");
        let t = ExistingSample::Text("t".into());
        let pref = ExistingSample::Preference {
            system: None,
            prompt: "q".into(),
            chosen: "c".into(),
            rejected: "x".into(),
        };
        let neg = ExistingSample::Labeled {
            system: None,
            prompt: "q".into(),
            completion: "r".into(),
            label: false,
        };
        assert!(
            p.fits(Format::ChatMl)
                && p.fits(Format::Text)
                && !p.fits(Format::Dpo)
                && !p.fits(Format::Kto)
        );
        assert!(!t.fits(Format::ChatMl) && t.fits(Format::Text));
        assert!(pref.fits(Format::Dpo) && pref.fits(Format::Alpaca) && !pref.fits(Format::Kto));
        assert!(neg.fits(Format::Kto) && !neg.fits(Format::ChatMl) && !neg.fits(Format::Text));
    }
}
