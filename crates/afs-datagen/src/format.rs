//! Output formats: the [`Formatter`] trait, the built-in formatter of each [`Format`] and
//! [`Shape`], and the JSON-line writer they share.

use afs_store::{Message, Role};
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::config::{Format, Shape, PLAIN_SEPARATOR};
use crate::error::DatagenError;

/// One training example, borrowed from a record (or a pair of records, or an existing line).
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    /// System prompt, if any.
    pub system: Option<&'a str>,
    /// The user's query (of a conversation: its last user turn).
    pub prompt: &'a str,
    /// Of a multi-turn record: the conversation up to the response (every turn but the
    /// final assistant turn), which formats write in place of `prompt`. Its own system turn,
    /// if it has one, wins over `system`.
    pub turns: Option<&'a [Message]>,
    /// What the example teaches.
    pub body: Body<'a>,
    /// Provenance, written by formats that carry metadata (`chatml`).
    pub metadata: Metadata<'a>,
}

/// The kinds of training example: what a format holds and what generation makes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExampleKind {
    /// A prompt and a response to imitate (supervised fine-tuning): [`Body::Response`].
    Sft,
    /// A prompt with a chosen and a rejected response: [`Body::Preference`].
    Preference,
    /// A prompt and one response labelled desirable or not: [`Body::Labeled`].
    Labeled,
}

impl ExampleKind {
    /// `sft`, `preference` or `labeled`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExampleKind::Sft => "sft",
            ExampleKind::Preference => "preference",
            ExampleKind::Labeled => "labeled",
        }
    }
}

/// The part of an [`Example`] that differs between supervised and preference formats.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// A response to imitate (supervised fine-tuning). `text` writes an empty response
    /// without a system prompt as the prompt alone: that is how a rehearsed `text` line,
    /// which has no prompt/response split, is passed.
    Response(&'a str),
    /// A preferred and a dispreferred response to the same prompt.
    Preference {
        /// The thumbs-up response.
        chosen: &'a str,
        /// The thumbs-down response.
        rejected: &'a str,
    },
    /// One response with a binary label (true = desirable).
    Labeled {
        /// The response.
        completion: &'a str,
        /// The user's verdict: true for thumbs up, false for thumbs down.
        label: bool,
    },
}

impl Body<'_> {
    /// `sft`, `preference` or `labeled`.
    pub fn kind(&self) -> &'static str {
        self.example_kind().as_str()
    }

    /// The kind of example this body makes.
    pub fn example_kind(&self) -> ExampleKind {
        match self {
            Body::Response(_) => ExampleKind::Sft,
            Body::Preference { .. } => ExampleKind::Preference,
            Body::Labeled { .. } => ExampleKind::Labeled,
        }
    }
}

/// Where an example came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metadata<'a> {
    /// Record id (for a pair, the chosen record's).
    pub id: Option<&'a str>,
    /// Model that produced the response.
    pub model: Option<&'a str>,
    /// When the record was logged.
    pub timestamp: Option<DateTime<Utc>>,
    /// Quality score of the record.
    pub quality_score: Option<f64>,
    /// The user's feedback, -1, 0 or 1.
    pub user_feedback: Option<i64>,
    /// For a rehearsal sample: its line number in the existing file.
    pub existing_line: Option<u64>,
}

/// Turns examples into lines of one format.
///
/// # Contract
/// [`write_line`](Self::write_line) appends exactly one JSON object followed by `\n` to
/// `out`, and nothing else. Strings are escaped as `serde_json` escapes them, with U+2028,
/// U+2029 and U+0085 additionally escaped as `\uXXXX` because some line readers (Python's
/// `str.splitlines`, JavaScript before ES2019) treat them as line breaks. The same example
/// always gives the same bytes. A formatter given a body it cannot hold (a supervised
/// format given a preference pair, `dpo` given a single response, ...) appends nothing and
/// returns [`DatagenError::UnsupportedExample`]; the pipeline only builds examples of the
/// body kind its format needs.
pub trait Formatter: Send + Sync {
    /// Its name, as the manifest and the result report it (`chatml`, ..., or a plug-in's
    /// own name).
    fn name(&self) -> &str;

    /// The kind of example it writes. Generation makes the examples of the configured
    /// [`Format`]'s kind ([`Format::example_kind`]); a plug-in formatter passed in
    /// [`crate::Hooks::formatter`] must write that kind.
    fn kind(&self) -> ExampleKind;

    /// Appends one line for `example` to `out`.
    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError>;
}

/// How a built-in format writes its lines, beyond its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatOptions {
    /// Plain strings or message lists; `None` = the format's [`Format::default_shape`]. A
    /// shape the format does not have ([`Format::shapes`]) is replaced by its default.
    pub shape: Option<Shape>,
    /// Write `chatml`'s `metadata` object.
    pub metadata: bool,
}

impl Default for FormatOptions {
    /// The format's default shape, with metadata.
    fn default() -> Self {
        FormatOptions {
            shape: None,
            metadata: true,
        }
    }
}

/// The formatter of `format`, writing lines as `options` say.
pub fn formatter(format: Format, options: FormatOptions) -> Box<dyn Formatter> {
    let shape = options
        .shape
        .filter(|s| format.shapes().contains(s))
        .unwrap_or(format.default_shape());
    Box::new(BuiltIn {
        format,
        shape,
        metadata: options.metadata,
    })
}

/// The error of a formatter given an example of a kind it cannot hold (for plug-in
/// formatters too).
pub fn unsupported_example(formatter: &dyn Formatter, example: &Example<'_>) -> DatagenError {
    DatagenError::UnsupportedExample {
        format: formatter.name().to_string(),
        kind: example.body.kind(),
    }
}

/// Appends `text` as a JSON string: the escapes `serde_json` writes (`\"`, `\\`, `\b`,
/// `\f`, `\n`, `\r`, `\t`, other control characters as `\u00xx`), plus `\u2028`, `\u2029`
/// and `\u0085` (see [`Formatter`]). Most texts need no escape at all, so it looks at 32
/// bytes at a time and copies clean runs whole.
pub(crate) fn push_json_str(out: &mut Vec<u8>, text: &str) {
    const CHUNK: usize = 32;
    // Bytes that start an escape: controls, quote, backslash, and the lead bytes of U+0085
    // (C2 85) and U+2028/U+2029 (E2 80 A8/A9). In UTF-8 these two values only ever lead.
    // Non-short-circuit `|` keeps the chunk test free of branches, so it compiles to SIMD.
    fn special(b: u8) -> bool {
        (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0xC2) | (b == 0xE2)
    }
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut clean_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        let end = match bytes.get(i..i + CHUNK) {
            Some(chunk) => {
                let chunk: &[u8; CHUNK] = chunk.try_into().expect("a chunk of CHUNK bytes");
                if !chunk.iter().fold(false, |any, &b| any | special(b)) {
                    i += CHUNK;
                    continue;
                }
                i + CHUNK
            }
            None => bytes.len(),
        };
        // This chunk (or the tail) has something to escape: go byte by byte.
        while i < end {
            let b = bytes[i];
            if !special(b) {
                i += 1;
                continue;
            }
            let (escape, len): (&[u8], usize) = match b {
                b'"' => (b"\\\"", 1),
                b'\\' => (b"\\\\", 1),
                0x08 => (b"\\b", 1),
                0x09 => (b"\\t", 1),
                0x0A => (b"\\n", 1),
                0x0C => (b"\\f", 1),
                0x0D => (b"\\r", 1),
                0x00..=0x1F => (b"", 1),
                0xC2 if bytes.get(i + 1) == Some(&0x85) => (b"\\u0085", 2),
                0xE2 if bytes.get(i + 1..i + 3) == Some(&[0x80, 0xA8]) => (b"\\u2028", 3),
                0xE2 if bytes.get(i + 1..i + 3) == Some(&[0x80, 0xA9]) => (b"\\u2029", 3),
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.extend_from_slice(&bytes[clean_from..i]);
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xF)]);
            } else {
                out.extend_from_slice(escape);
            }
            i += len;
            clean_from = i;
        }
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

/// Appends a number as `serde_json` writes it (`null` for NaN and infinities).
fn push_json_number<T: Serialize>(out: &mut Vec<u8>, value: T) {
    // Writing to a Vec cannot fail, and numbers always serialise.
    serde_json::to_writer(&mut *out, &value).expect("a number serialises to memory");
}

/// Appends a list of role/content messages: the optional system message, then `rest`.
fn push_messages(out: &mut Vec<u8>, system: Option<&str>, rest: &[(&str, &str)]) {
    push_turns(out, (b"role", b"content"), system, rest);
}

/// Appends a JSON array of turns, each an object of two keys (`keys`: the role's, then the
/// content's): the optional system turn, then `rest`.
fn push_turns(
    out: &mut Vec<u8>,
    keys: (&[u8], &[u8]),
    system: Option<&str>,
    rest: &[(&str, &str)],
) {
    out.push(b'[');
    let system = system.map(|s| ("system", s));
    for (i, (role, content)) in system.iter().chain(rest).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(keys.0);
        out.extend_from_slice(b"\":");
        push_json_str(out, role);
        out.extend_from_slice(b",\"");
        out.extend_from_slice(keys.1);
        out.extend_from_slice(b"\":");
        push_json_str(out, content);
        out.push(b'}');
    }
    out.push(b']');
}

/// The system prompt and the role/content turns an example's prompt is made of: the
/// query as one user turn, or a conversation's turns up to the response. A conversation
/// that has a system turn of its own keeps it, and the configured system prompt is not
/// added.
pub(crate) fn prompt_turns<'a>(
    example: &Example<'a>,
) -> (Option<&'a str>, Vec<(&'a str, &'a str)>) {
    match example.turns {
        None => (example.system, vec![("user", example.prompt)]),
        Some(turns) => {
            let (system, rest) = match turns.split_first() {
                Some((first, rest)) if first.role == Role::System => {
                    (Some(first.content.as_str()), rest)
                }
                _ => (example.system, turns),
            };
            let rest = rest
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str()))
                .collect();
            (system, rest)
        }
    }
}

/// The prompt of a plain line (see [`render_plain_prompt`] and [`render_plain_turns`]).
pub(crate) fn plain_prompt(example: &Example<'_>) -> String {
    match example.turns {
        None => render_plain_prompt(example.system, example.prompt),
        Some(_) => {
            let (system, turns) = prompt_turns(example);
            render_plain_turns(system, &turns)
        }
    }
}

/// A TRL prompt in `shape`: the plain template (see [`Shape`]), or a list of the system
/// (if any) and the prompt's messages.
fn push_prompt(out: &mut Vec<u8>, shape: Shape, example: &Example<'_>) {
    match shape {
        Shape::Plain => push_json_str(out, &plain_prompt(example)),
        Shape::Conversational => {
            let (system, turns) = prompt_turns(example);
            push_messages(out, system, &turns);
        }
    }
}

/// A TRL completion in `shape`: the string, or a one-message assistant list.
fn push_reply(out: &mut Vec<u8>, shape: Shape, content: &str) {
    match shape {
        Shape::Plain => push_json_str(out, content),
        Shape::Conversational => push_messages(out, None, &[("assistant", content)]),
    }
}

/// The prompt of a plain line: the system prompt (if any) and the query, each followed by
/// [`PLAIN_SEPARATOR`].
pub(crate) fn render_plain_prompt(system: Option<&str>, prompt: &str) -> String {
    let mut text = String::with_capacity(system.map_or(0, str::len) + prompt.len() + 4);
    for part in system.into_iter().chain([prompt]) {
        text.push_str(part);
        text.push_str(PLAIN_SEPARATOR);
    }
    text
}

/// The prompt of a plain line made from a conversation: the system prompt (if any), then
/// every turn as `ROLE: CONTENT` (the role's lowercase name), each followed by
/// [`PLAIN_SEPARATOR`]; the response follows unchanged, as for a single turn.
pub(crate) fn render_plain_turns(system: Option<&str>, turns: &[(&str, &str)]) -> String {
    let mut text = String::new();
    if let Some(system) = system {
        text.push_str(system);
        text.push_str(PLAIN_SEPARATOR);
    }
    for (role, content) in turns {
        text.push_str(role);
        text.push_str(": ");
        text.push_str(content);
        text.push_str(PLAIN_SEPARATOR);
    }
    text
}

/// RFC 3339, UTC, microseconds: written digit by digit, without an allocation.
struct Rfc3339(DateTime<Utc>);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_micros().min(999_999)
        )
    }
}

/// Appends the digits of `value`, left-padded with zeros to `width`.
fn push_digits(out: &mut Vec<u8>, value: u32, width: u32) {
    for place in (0..width).rev() {
        out.push(b'0' + (value / 10u32.pow(place) % 10) as u8);
    }
}

/// Appends `t` as a JSON string in the form of [`Rfc3339`].
fn push_json_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    let Ok(year @ 0..=9999) = u32::try_from(t.year()) else {
        // Years outside 0..=9999 (never seen in a log) take the general path.
        push_json_str(out, &Rfc3339(t).to_string());
        return;
    };
    out.push(b'"');
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, t.month(), 2);
    out.push(b'-');
    push_digits(out, t.day(), 2);
    out.push(b'T');
    push_digits(out, t.hour(), 2);
    out.push(b':');
    push_digits(out, t.minute(), 2);
    out.push(b':');
    push_digits(out, t.second(), 2);
    out.push(b'.');
    push_digits(out, t.timestamp_subsec_micros().min(999_999), 6);
    out.extend_from_slice(b"Z\"");
}

/// Appends `metadata` as a JSON object (the fields that are set, in declaration order,
/// after `source` and `line` for a rehearsal sample).
fn push_metadata(out: &mut Vec<u8>, metadata: &Metadata<'_>) {
    let mut sep = b'{';
    let mut key = |out: &mut Vec<u8>, name: &[u8]| {
        out.push(sep);
        sep = b',';
        out.push(b'"');
        out.extend_from_slice(name);
        out.extend_from_slice(b"\":");
    };
    if let Some(line) = metadata.existing_line {
        key(out, b"source");
        push_json_str(out, "existing");
        key(out, b"line");
        push_json_number(out, line);
    }
    if let Some(id) = metadata.id {
        key(out, b"id");
        push_json_str(out, id);
    }
    if let Some(model) = metadata.model {
        key(out, b"model");
        push_json_str(out, model);
    }
    if let Some(t) = metadata.timestamp {
        key(out, b"timestamp");
        push_json_time(out, t);
    }
    if let Some(q) = metadata.quality_score {
        key(out, b"quality_score");
        push_json_number(out, q);
    }
    if let Some(f) = metadata.user_feedback {
        key(out, b"user_feedback");
        push_json_number(out, f);
    }
    if sep == b'{' {
        out.push(b'{');
    }
    out.push(b'}');
}

impl Serialize for Metadata<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(line) = self.existing_line {
            map.serialize_entry("source", "existing")?;
            map.serialize_entry("line", &line)?;
        }
        if let Some(id) = self.id {
            map.serialize_entry("id", id)?;
        }
        if let Some(model) = self.model {
            map.serialize_entry("model", model)?;
        }
        if let Some(t) = self.timestamp {
            map.serialize_key("timestamp")?;
            map.serialize_value(&CollectStr(Rfc3339(t)))?;
        }
        if let Some(q) = self.quality_score {
            map.serialize_entry("quality_score", &q)?;
        }
        if let Some(f) = self.user_feedback {
            map.serialize_entry("user_feedback", &f)?;
        }
        map.end()
    }
}

/// Serialises a `Display` value as a JSON string without building a `String` first.
struct CollectStr<T>(T);

impl<T: std::fmt::Display> Serialize for CollectStr<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Text of a supervised example: SFT formats also accept the chosen response of a pair
/// and a positively labelled completion, which is what rehearsal of such lines needs.
fn response_of<'a>(example: &Example<'a>) -> Option<&'a str> {
    match example.body {
        Body::Response(r) => Some(r),
        Body::Preference { chosen, .. } => Some(chosen),
        Body::Labeled {
            completion,
            label: true,
        } => Some(completion),
        Body::Labeled { label: false, .. } => None,
    }
}

/// The formatter of a built-in [`Format`], in one shape.
#[derive(Debug, Clone, Copy)]
struct BuiltIn {
    format: Format,
    shape: Shape,
    metadata: bool,
}

impl Formatter for BuiltIn {
    fn name(&self) -> &str {
        self.format.as_str()
    }

    fn kind(&self) -> ExampleKind {
        self.format.example_kind()
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let refused = || unsupported_example(self, example);
        match self.format {
            Format::ChatMl | Format::OpenAi => {
                let response = response_of(example).ok_or_else(refused)?;
                self.push_messages_line(out, example, response);
            }
            Format::Alpaca => {
                let output = response_of(example).ok_or_else(refused)?;
                push_alpaca_line(out, example, output);
            }
            Format::Completion => {
                let response = response_of(example).ok_or_else(refused)?;
                out.extend_from_slice(b"{\"prompt\":");
                push_prompt(out, self.shape, example);
                out.extend_from_slice(b",\"completion\":");
                push_reply(out, self.shape, response);
            }
            Format::Text => {
                let response = response_of(example).ok_or_else(refused)?;
                push_text_line(out, example, response);
            }
            Format::ShareGpt => {
                let response = response_of(example).ok_or_else(refused)?;
                push_sharegpt_line(out, example, response);
            }
            Format::Dpo => {
                let Body::Preference { chosen, rejected } = example.body else {
                    return Err(refused());
                };
                out.extend_from_slice(b"{\"prompt\":");
                push_prompt(out, self.shape, example);
                out.extend_from_slice(b",\"chosen\":");
                push_reply(out, self.shape, chosen);
                out.extend_from_slice(b",\"rejected\":");
                push_reply(out, self.shape, rejected);
            }
            Format::OpenAiDpo => {
                let Body::Preference { chosen, rejected } = example.body else {
                    return Err(refused());
                };
                push_openai_dpo_line(out, example, chosen, rejected);
            }
            Format::Kto => {
                let Body::Labeled { completion, label } = example.body else {
                    return Err(refused());
                };
                out.extend_from_slice(b"{\"prompt\":");
                push_prompt(out, self.shape, example);
                out.extend_from_slice(b",\"completion\":");
                push_reply(out, self.shape, completion);
                out.extend_from_slice(if label {
                    b",\"label\":true"
                } else {
                    b",\"label\":false"
                });
            }
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

impl BuiltIn {
    /// The line of `chatml` and `openai` but for its closing brace: the messages (the
    /// prompt's, then `response` as the assistant's), and `chatml`'s metadata when on.
    fn push_messages_line(&self, out: &mut Vec<u8>, example: &Example<'_>, response: &str) {
        out.extend_from_slice(b"{\"messages\":");
        let (system, mut turns) = prompt_turns(example);
        turns.push(("assistant", response));
        push_messages(out, system, &turns);
        if self.format == Format::ChatMl && self.metadata {
            out.extend_from_slice(b",\"metadata\":");
            push_metadata(out, &example.metadata);
        }
    }
}

/// An `alpaca` line but for its closing brace: the instruction, an empty input, `output`,
/// and the system prompt when there is one.
fn push_alpaca_line(out: &mut Vec<u8>, example: &Example<'_>, output: &str) {
    out.extend_from_slice(b"{\"instruction\":");
    let (system, turns) = prompt_turns(example);
    match example.turns {
        None => push_json_str(out, example.prompt),
        // A conversation: its turns in the plain template, without a trailing
        // separator (the system prompt has a key of its own).
        Some(_) => push_json_str(
            out,
            render_plain_turns(None, &turns).trim_end_matches(PLAIN_SEPARATOR),
        ),
    }
    out.extend_from_slice(b",\"input\":\"\",\"output\":");
    push_json_str(out, output);
    if let Some(system) = system {
        out.extend_from_slice(b",\"system\":");
        push_json_str(out, system);
    }
}

/// A `text` line but for its closing brace: the example's text (see [`render_text`]).
fn push_text_line(out: &mut Vec<u8>, example: &Example<'_>, response: &str) {
    out.extend_from_slice(b"{\"text\":");
    // A rehearsal `text` line arrives whole, as a prompt with an empty response.
    if response.is_empty() && example.system.is_none() && example.turns.is_none() {
        push_json_str(out, example.prompt);
    } else {
        push_json_str(out, &render_text(example, response));
    }
}

/// A `sharegpt` line but for its closing brace: the conversation, `response` last.
fn push_sharegpt_line(out: &mut Vec<u8>, example: &Example<'_>, response: &str) {
    // The system turn is inside the conversation, and the roles are the ones
    // TRL's chat templates need after its `from`/`value` renaming; axolotl reads
    // them as they are, LLaMA-Factory with its `tags` set (docs/TRAINING.md).
    out.extend_from_slice(b"{\"conversations\":");
    let (system, mut turns) = prompt_turns(example);
    turns.push(("assistant", response));
    push_turns(out, (b"from", b"value"), system, &turns);
}

/// An `openai-dpo` line but for its closing brace: the one-turn input, then the
/// `chosen` and `rejected` outputs.
fn push_openai_dpo_line(out: &mut Vec<u8>, example: &Example<'_>, chosen: &str, rejected: &str) {
    out.extend_from_slice(b"{\"input\":{\"messages\":");
    let (system, turns) = prompt_turns(example);
    // OpenAI's preference fine-tuning takes a one-turn input: the turns of a
    // longer conversation become one user message, in the plain template.
    if let [("user", _)] = turns[..] {
        push_messages(out, system, &turns);
    } else {
        let flat = render_plain_turns(None, &turns);
        let flat = flat.trim_end_matches(PLAIN_SEPARATOR);
        push_messages(out, system, &[("user", flat)]);
    }
    out.extend_from_slice(b"},\"preferred_output\":");
    push_messages(out, None, &[("assistant", chosen)]);
    out.extend_from_slice(b",\"non_preferred_output\":");
    push_messages(out, None, &[("assistant", rejected)]);
}

/// The text of a `text` line: the plain prompt (the system prompt if any, and the query
/// or the conversation's turns, each followed by a blank line), then the response.
pub(crate) fn render_text(example: &Example<'_>, response: &str) -> String {
    let mut text = plain_prompt(example);
    text.push_str(response);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: Format, example: &Example<'_>) -> String {
        line_in(format, None, example)
    }

    fn line_in(format: Format, shape: Option<Shape>, example: &Example<'_>) -> String {
        let mut out = Vec::new();
        let options = FormatOptions {
            shape,
            ..FormatOptions::default()
        };
        formatter(format, options)
            .write_line(example, &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        text
    }

    fn sft<'a>(prompt: &'a str, response: &'a str) -> Example<'a> {
        Example {
            turns: None,
            system: None,
            prompt,
            body: Body::Response(response),
            metadata: Metadata::default(),
        }
    }

    fn check(format: Format, example: &Example<'_>, expected: &str) {
        assert_eq!(
            line(format, example),
            format!("{expected}\n"),
            "format {format}"
        );
    }

    /// A conversation's turns before the response, with its own system turn or not.
    fn chat(own_system: bool) -> Vec<Message> {
        let mut turns = vec![
            Message::new(Role::User, "hi"),
            Message::new(Role::Assistant, "call"),
            Message::new(Role::Tool, "42"),
            Message::new(Role::Assistant, "hello"),
            Message::new(Role::User, "q"),
        ];
        if own_system {
            turns.insert(0, Message::new(Role::System, "own"));
        }
        turns
    }

    #[test]
    fn conversations_are_written_whole_in_every_format() {
        let turns = chat(false);
        let base = Example {
            turns: Some(&turns),
            system: Some("s"),
            ..sft("q", "r")
        };
        let msgs = r#"{"role":"system","content":"s"},{"role":"user","content":"hi"},{"role":"assistant","content":"call"},{"role":"tool","content":"42"},{"role":"assistant","content":"hello"},{"role":"user","content":"q"}"#;
        // The plain prompt as it reads inside a JSON string.
        let plain =
            r"s\n\nuser: hi\n\nassistant: call\n\ntool: 42\n\nassistant: hello\n\nuser: q\n\n";
        check(
            Format::ChatMl,
            &base,
            &format!(
                r#"{{"messages":[{msgs},{{"role":"assistant","content":"r"}}],"metadata":{{}}}}"#
            ),
        );
        check(
            Format::OpenAi,
            &base,
            &format!(r#"{{"messages":[{msgs},{{"role":"assistant","content":"r"}}]}}"#),
        );
        check(
            Format::ShareGpt,
            &base,
            r#"{"conversations":[{"from":"system","value":"s"},{"from":"user","value":"hi"},{"from":"assistant","value":"call"},{"from":"tool","value":"42"},{"from":"assistant","value":"hello"},{"from":"user","value":"q"},{"from":"assistant","value":"r"}]}"#,
        );
        check(Format::Text, &base, &format!(r#"{{"text":"{plain}r"}}"#));
        check(
            Format::Alpaca,
            &base,
            r#"{"instruction":"user: hi\n\nassistant: call\n\ntool: 42\n\nassistant: hello\n\nuser: q","input":"","output":"r","system":"s"}"#,
        );
        check(
            Format::Completion,
            &base,
            &format!(r#"{{"prompt":"{plain}","completion":"r"}}"#),
        );
        let pair = Example {
            body: Body::Preference {
                chosen: "good",
                rejected: "bad",
            },
            ..base
        };
        assert_eq!(
            line_in(Format::Dpo, Some(Shape::Conversational), &pair).trim_end(),
            format!(
                r#"{{"prompt":[{msgs}],"chosen":[{{"role":"assistant","content":"good"}}],"rejected":[{{"role":"assistant","content":"bad"}}]}}"#
            ),
        );
        assert_eq!(
            line_in(Format::Dpo, Some(Shape::Plain), &pair),
            format!("{{\"prompt\":\"{plain}\",\"chosen\":\"good\",\"rejected\":\"bad\"}}\n")
        );
        check(
            Format::OpenAiDpo,
            &pair,
            r#"{"input":{"messages":[{"role":"system","content":"s"},{"role":"user","content":"user: hi\n\nassistant: call\n\ntool: 42\n\nassistant: hello\n\nuser: q"}]},"preferred_output":[{"role":"assistant","content":"good"}],"non_preferred_output":[{"role":"assistant","content":"bad"}]}"#,
        );
        let labeled = Example {
            body: Body::Labeled {
                completion: "r",
                label: false,
            },
            ..base
        };
        assert_eq!(
            line_in(Format::Kto, Some(Shape::Conversational), &labeled).trim_end(),
            format!(
                r#"{{"prompt":[{msgs}],"completion":[{{"role":"assistant","content":"r"}}],"label":false}}"#
            ),
        );
        // The conversation's own system turn wins over the configured one.
        let own = chat(true);
        let with_own = Example {
            turns: Some(&own),
            ..base
        };
        assert_eq!(
            line(Format::OpenAi, &with_own),
            line(
                Format::OpenAi,
                &Example {
                    system: Some("own"),
                    ..base
                }
            )
        );
        assert!(!line(Format::ShareGpt, &with_own).contains(r#""value":"s""#));
    }

    #[test]
    fn every_format_writes_its_keys() {
        let e = sft("q", "r");
        check(
            Format::ChatMl,
            &e,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"r"}],"metadata":{}}"#,
        );
        check(
            Format::Alpaca,
            &e,
            r#"{"instruction":"q","input":"","output":"r"}"#,
        );
        check(
            Format::OpenAi,
            &e,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"r"}]}"#,
        );
        check(
            Format::Completion,
            &e,
            r#"{"prompt":"q\n\n","completion":"r"}"#,
        );
        check(Format::Text, &e, r#"{"text":"q\n\nr"}"#);
        check(
            Format::ShareGpt,
            &e,
            r#"{"conversations":[{"from":"user","value":"q"},{"from":"assistant","value":"r"}]}"#,
        );
        let pair = Example {
            turns: None,
            body: Body::Preference {
                chosen: "good",
                rejected: "bad",
            },
            ..e
        };
        check(
            Format::Dpo,
            &pair,
            r#"{"prompt":"q\n\n","chosen":"good","rejected":"bad"}"#,
        );
        check(
            Format::OpenAiDpo,
            &pair,
            r#"{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":"good"}],"non_preferred_output":[{"role":"assistant","content":"bad"}]}"#,
        );
        let labeled = Example {
            turns: None,
            body: Body::Labeled {
                completion: "bad",
                label: false,
            },
            ..e
        };
        check(
            Format::Kto,
            &labeled,
            r#"{"prompt":"q\n\n","completion":"bad","label":false}"#,
        );
    }

    #[test]
    fn the_shape_is_the_configured_one_whatever_the_system_prompt() {
        let plain = sft("q", "r");
        let with_system = Example {
            turns: None,
            system: Some("s"),
            ..plain
        };
        let conversational =
            |e: &Example<'_>| line_in(Format::Completion, Some(Shape::Conversational), e);
        assert_eq!(
            conversational(&plain),
            "{\"prompt\":[{\"role\":\"user\",\"content\":\"q\"}],\"completion\":[{\"role\":\"assistant\",\"content\":\"r\"}]}\n"
        );
        assert_eq!(
            conversational(&with_system),
            "{\"prompt\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"q\"}],\"completion\":[{\"role\":\"assistant\",\"content\":\"r\"}]}\n"
        );
        // Plain: the system prompt starts the prompt string, and prompt + completion is
        // the `text` line.
        let plain_line: serde_json::Value = serde_json::from_str(&line_in(
            Format::Completion,
            Some(Shape::Plain),
            &with_system,
        ))
        .unwrap();
        assert_eq!(plain_line["prompt"], "s\n\nq\n\n");
        let joined = format!(
            "{}{}",
            plain_line["prompt"].as_str().unwrap(),
            plain_line["completion"].as_str().unwrap()
        );
        assert_eq!(joined, render_text(&with_system, "r"));
        // A shape the format does not have falls back to its only one.
        assert_eq!(
            line_in(Format::Text, Some(Shape::Conversational), &plain),
            line(Format::Text, &plain)
        );
        let labeled = Example {
            turns: None,
            body: Body::Labeled {
                completion: "r",
                label: true,
            },
            ..with_system
        };
        assert_eq!(
            line_in(Format::Kto, Some(Shape::Conversational), &labeled),
            "{\"prompt\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"q\"}],\"completion\":[{\"role\":\"assistant\",\"content\":\"r\"}],\"label\":true}\n"
        );
    }

    #[test]
    fn chatml_metadata_can_be_left_out() {
        let e = sft("q", "r");
        let mut out = Vec::new();
        let options = FormatOptions {
            metadata: false,
            ..FormatOptions::default()
        };
        formatter(Format::ChatMl, options)
            .write_line(&e, &mut out)
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), line(Format::OpenAi, &e));
    }

    #[test]
    fn system_prompt_in_each_format() {
        let e = Example {
            turns: None,
            system: Some("be brief"),
            ..sft("q", "r")
        };
        check(
            Format::ChatMl,
            &e,
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"q"},{"role":"assistant","content":"r"}],"metadata":{}}"#,
        );
        check(
            Format::Alpaca,
            &e,
            r#"{"instruction":"q","input":"","output":"r","system":"be brief"}"#,
        );
        check(
            Format::Completion,
            &e,
            r#"{"prompt":"be brief\n\nq\n\n","completion":"r"}"#,
        );
        check(Format::Text, &e, r#"{"text":"be brief\n\nq\n\nr"}"#);
        check(
            Format::ShareGpt,
            &e,
            r#"{"conversations":[{"from":"system","value":"be brief"},{"from":"user","value":"q"},{"from":"assistant","value":"r"}]}"#,
        );
        let pair = Example {
            turns: None,
            body: Body::Preference {
                chosen: "c",
                rejected: "x",
            },
            ..e
        };
        check(
            Format::Dpo,
            &pair,
            r#"{"prompt":"be brief\n\nq\n\n","chosen":"c","rejected":"x"}"#,
        );
        check(
            Format::OpenAiDpo,
            &pair,
            r#"{"input":{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":"c"}],"non_preferred_output":[{"role":"assistant","content":"x"}]}"#,
        );
    }

    #[test]
    fn metadata_of_a_record() {
        let t = DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap();
        let e = Example {
            turns: None,
            metadata: Metadata {
                id: Some("01J"),
                model: Some("m1"),
                timestamp: Some(t),
                quality_score: Some(0.75),
                user_feedback: Some(1),
                existing_line: None,
            },
            ..sft("q", "r")
        };
        let text = line(Format::ChatMl, &e);
        assert!(
            text.contains(r#""metadata":{"id":"01J","model":"m1","timestamp":"2026-01-01T00:00:00.123456Z","quality_score":0.75,"user_feedback":1}"#),
            "{text}"
        );
    }

    #[test]
    fn hard_text_is_escaped_and_round_trips() {
        let nasty = "emoji 😀 CJK 日本語 \"quotes\" back\\slash tab\t nl\n cr\r nul\u{0} bell\u{7} ls\u{2028} ps\u{2029} nel\u{85} del\u{7f} bom\u{feff}";
        for format in [
            Format::ChatMl,
            Format::Alpaca,
            Format::Completion,
            Format::Text,
            Format::ShareGpt,
        ] {
            let text = line(format, &sft(nasty, nasty));
            for raw in ['\u{2028}', '\u{2029}', '\u{85}', '\u{0}', '\r'] {
                assert!(!text.contains(raw), "{format} left {raw:?} raw");
            }
            assert!(
                text.contains("\\u2028") && text.contains("\\u2029") && text.contains("\\u0085")
            );
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let prompt = match format {
                Format::ChatMl => &value["messages"][0]["content"],
                Format::Alpaca => &value["instruction"],
                Format::Completion => {
                    assert_eq!(value["prompt"], format!("{nasty}\n\n"));
                    continue;
                }
                Format::ShareGpt => &value["conversations"][0]["value"],
                _ => {
                    assert_eq!(value["text"], format!("{nasty}\n\n{nasty}"));
                    continue;
                }
            };
            assert_eq!(prompt, nasty, "{format}");
        }
    }

    /// The escaping the writer must reproduce: `serde_json`'s, plus `\u` escapes for the
    /// characters some line readers split on.
    struct LineSafeReference;

    impl serde_json::ser::Formatter for LineSafeReference {
        fn write_string_fragment<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            fragment: &str,
        ) -> std::io::Result<()> {
            let mut start = 0;
            for (i, c) in fragment.char_indices() {
                let escape: &[u8] = match c {
                    '\u{2028}' => b"\\u2028",
                    '\u{2029}' => b"\\u2029",
                    '\u{85}' => b"\\u0085",
                    _ => continue,
                };
                writer.write_all(&fragment.as_bytes()[start..i])?;
                writer.write_all(escape)?;
                start = i + c.len_utf8();
            }
            writer.write_all(&fragment.as_bytes()[start..])
        }
    }

    fn reference<T: Serialize>(value: &T) -> String {
        let mut out = Vec::new();
        value
            .serialize(&mut serde_json::Serializer::with_formatter(
                &mut out,
                LineSafeReference,
            ))
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        let check = |text: &str| {
            let mut out = Vec::new();
            push_json_str(&mut out, text);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                reference(&text),
                "{text:?}"
            );
        };
        // Every character up to U+3000 alone, between text, and at a 32-byte chunk's edges.
        for c in (0..0x3000).filter_map(char::from_u32) {
            for pad in [0, 1, 30, 31, 32, 33, 63] {
                let text = format!("{}{c}{}", "a".repeat(pad), "b".repeat(pad % 7));
                check(&text);
            }
        }
        check("");
        check(&"plain words only ".repeat(40));
        check(&"\u{2028}\u{2029}\u{85}\"\\\n\u{0}\u{1f}\u{7f}é😀".repeat(9));
        // A deterministic mix of hard characters at every position.
        let alphabet: Vec<char> = "ab \"\\\n\t\u{1}\u{85}\u{2028}\u{2029}\u{a0}é€😀\u{e2}\u{c2}"
            .chars()
            .collect();
        let mut state = 7u64;
        for len in 0..200 {
            let text: String = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect();
            check(&text);
        }
    }

    #[test]
    fn metadata_is_written_like_serde_json() {
        let t = |micros| DateTime::from_timestamp_micros(micros).unwrap();
        let full = Metadata {
            id: Some("01J\"x"),
            model: Some("m\u{2028}"),
            timestamp: Some(t(1_767_225_600_123_456)),
            quality_score: Some(0.1 + 0.2),
            user_feedback: Some(-1),
            existing_line: Some(12),
        };
        let cases = [
            Metadata::default(),
            full,
            Metadata {
                existing_line: None,
                ..full
            },
            Metadata {
                timestamp: Some(t(0)),
                quality_score: Some(1.0),
                ..Metadata::default()
            },
            Metadata {
                timestamp: Some(t(-62_000_000_000_000_000)),
                quality_score: Some(f64::NAN),
                ..Metadata::default()
            },
            Metadata {
                timestamp: Some(t(253_402_300_800_000_000)),
                quality_score: Some(1e-7),
                ..Metadata::default()
            },
        ];
        for metadata in cases {
            let mut out = Vec::new();
            push_metadata(&mut out, &metadata);
            assert_eq!(String::from_utf8(out).unwrap(), reference(&metadata));
        }
    }

    #[test]
    fn mismatched_bodies_are_refused() {
        let e = sft("q", "r");
        let mut out = Vec::new();
        assert!(matches!(
            formatter(Format::Dpo, FormatOptions::default()).write_line(&e, &mut out),
            Err(DatagenError::UnsupportedExample {
                format,
                kind: "sft"
            }) if format == "dpo"
        ));
        for f in [Format::Kto, Format::OpenAiDpo] {
            assert!(formatter(f, FormatOptions::default())
                .write_line(&e, &mut out)
                .is_err());
        }
        let negative = Example {
            turns: None,
            body: Body::Labeled {
                completion: "r",
                label: false,
            },
            ..e
        };
        assert!(formatter(Format::ChatMl, FormatOptions::default())
            .write_line(&negative, &mut out)
            .is_err());
        assert!(out.is_empty());
        for f in Format::ALL {
            let built = formatter(f, FormatOptions::default());
            assert_eq!(built.name(), f.as_str());
            assert_eq!(built.kind(), f.example_kind());
        }
    }
}
