//! Output formats: the [`Formatter`] trait, one implementation per [`Format`], and the
//! JSON-line writer they share.

use std::io;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::config::Format;
use crate::error::DatagenError;

/// One training example, borrowed from a record (or a pair of records, or an existing line).
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    /// System prompt, if any.
    pub system: Option<&'a str>,
    /// The user's query.
    pub prompt: &'a str,
    /// What the example teaches.
    pub body: Body<'a>,
    /// Provenance, written by formats that carry metadata (`chatml`).
    pub metadata: Metadata<'a>,
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
        match self {
            Body::Response(_) => "sft",
            Body::Preference { .. } => "preference",
            Body::Labeled { .. } => "labeled",
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
/// `out`, and nothing else. Strings are escaped by `serde_json`, with U+2028, U+2029 and
/// U+0085 additionally escaped as `\uXXXX` because some line readers (Python's
/// `str.splitlines`, JavaScript before ES2019) treat them as line breaks. The same example
/// always gives the same bytes. A formatter given a body it cannot hold (a supervised
/// format given a preference pair, `dpo` given a single response, ...) appends nothing and
/// returns [`DatagenError::UnsupportedExample`]; the pipeline only builds examples of the
/// body kind its format needs.
pub trait Formatter: Send + Sync {
    /// The format this formatter writes.
    fn format(&self) -> Format;

    /// Appends one line for `example` to `out`.
    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError>;
}

/// The formatter of `format`.
pub fn formatter(format: Format) -> &'static dyn Formatter {
    match format {
        Format::ChatMl => &ChatMl,
        Format::Alpaca => &Alpaca,
        Format::Completion => &Completion,
        Format::Text => &Text,
        Format::ShareGpt => &ShareGpt,
        Format::Dpo => &Dpo,
        Format::Kto => &Kto,
    }
}

fn unsupported(format: Format, example: &Example<'_>) -> DatagenError {
    DatagenError::UnsupportedExample {
        format: format.as_str(),
        kind: example.body.kind(),
    }
}

/// Serialises `value` as one line with the escaping policy of [`Formatter`].
fn write_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, LineSafeFormatter);
    // Writing to a Vec cannot fail, and every value here serialises (strings, numbers,
    // booleans, maps with string keys), so an error would be a bug in this module.
    value
        .serialize(&mut ser)
        .expect("serialising a training line to memory cannot fail");
    out.push(b'\n');
}

/// `serde_json`'s compact formatter, plus `\u` escapes for the characters that some line
/// readers split on.
struct LineSafeFormatter;

impl serde_json::ser::Formatter for LineSafeFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let bytes = fragment.as_bytes();
        // U+2028 and U+2029 are E2 80 A8/A9 in UTF-8, U+0085 is C2 85.
        if !bytes.iter().any(|&b| b == 0xE2 || b == 0xC2) {
            return writer.write_all(bytes);
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape: &[u8] = match c {
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                '\u{85}' => b"\\u0085",
                _ => continue,
            };
            writer.write_all(&bytes[start..i])?;
            writer.write_all(escape)?;
            start = i + c.len_utf8();
        }
        writer.write_all(&bytes[start..])
    }
}

/// A role/content message.
#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

/// Serialises a list of messages: the optional system message, then the others.
struct Messages<'a> {
    system: Option<&'a str>,
    rest: &'a [Message<'a>],
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq =
            serializer.serialize_seq(Some(self.rest.len() + usize::from(self.system.is_some())))?;
        if let Some(system) = self.system {
            seq.serialize_element(&Message {
                role: "system",
                content: system,
            })?;
        }
        for m in self.rest {
            seq.serialize_element(m)?;
        }
        seq.end()
    }
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

/// `chatml`: `{"messages":[...],"metadata":{...}}`.
#[derive(Debug, Clone, Copy)]
struct ChatMl;

impl Formatter for ChatMl {
    fn format(&self) -> Format {
        Format::ChatMl
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let response = response_of(example).ok_or_else(|| unsupported(self.format(), example))?;
        #[derive(Serialize)]
        struct Line<'a> {
            messages: Messages<'a>,
            metadata: &'a Metadata<'a>,
        }
        let rest = [
            Message {
                role: "user",
                content: example.prompt,
            },
            Message {
                role: "assistant",
                content: response,
            },
        ];
        write_json(
            &Line {
                messages: Messages {
                    system: example.system,
                    rest: &rest,
                },
                metadata: &example.metadata,
            },
            out,
        );
        Ok(())
    }
}

/// `alpaca`: `{"instruction":..,"input":"","output":..,"system":..?}`.
#[derive(Debug, Clone, Copy)]
struct Alpaca;

impl Formatter for Alpaca {
    fn format(&self) -> Format {
        Format::Alpaca
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let output = response_of(example).ok_or_else(|| unsupported(self.format(), example))?;
        #[derive(Serialize)]
        struct Line<'a> {
            instruction: &'a str,
            input: &'a str,
            output: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            system: Option<&'a str>,
        }
        write_json(
            &Line {
                instruction: example.prompt,
                input: "",
                output,
                system: example.system,
            },
            out,
        );
        Ok(())
    }
}

/// A TRL prompt: a plain string, or (with a system prompt) TRL's conversational form, a
/// list of system and user messages.
struct Prompt<'a> {
    system: Option<&'a str>,
    user: &'a str,
}

impl Serialize for Prompt<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.system {
            None => serializer.serialize_str(self.user),
            Some(_) => Messages {
                system: self.system,
                rest: &[Message {
                    role: "user",
                    content: self.user,
                }],
            }
            .serialize(serializer),
        }
    }
}

/// A TRL completion: a string, or a one-message assistant list in conversational form.
struct Reply<'a> {
    conversational: bool,
    content: &'a str,
}

impl Serialize for Reply<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.conversational {
            Messages {
                system: None,
                rest: &[Message {
                    role: "assistant",
                    content: self.content,
                }],
            }
            .serialize(serializer)
        } else {
            serializer.serialize_str(self.content)
        }
    }
}

/// `completion`: `{"prompt":..,"completion":..}` (conversational lists with a system prompt).
#[derive(Debug, Clone, Copy)]
struct Completion;

impl Formatter for Completion {
    fn format(&self) -> Format {
        Format::Completion
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let response = response_of(example).ok_or_else(|| unsupported(self.format(), example))?;
        #[derive(Serialize)]
        struct Line<'a> {
            prompt: Prompt<'a>,
            completion: Reply<'a>,
        }
        let conversational = example.system.is_some();
        write_json(
            &Line {
                prompt: Prompt {
                    system: example.system,
                    user: example.prompt,
                },
                completion: Reply {
                    conversational,
                    content: response,
                },
            },
            out,
        );
        Ok(())
    }
}

/// The text of a `text` line: the system prompt (if any), the query and the response,
/// separated by blank lines.
pub(crate) fn render_text(system: Option<&str>, prompt: &str, response: &str) -> String {
    let mut text = String::with_capacity(
        system.map_or(0, |s| s.len() + 2) + prompt.len() + response.len() + 2,
    );
    if let Some(system) = system {
        text.push_str(system);
        text.push_str("\n\n");
    }
    text.push_str(prompt);
    text.push_str("\n\n");
    text.push_str(response);
    text
}

/// `text`: `{"text":..}`, the system prompt, query and response separated by blank lines.
#[derive(Debug, Clone, Copy)]
struct Text;

impl Formatter for Text {
    fn format(&self) -> Format {
        Format::Text
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let response = response_of(example).ok_or_else(|| unsupported(self.format(), example))?;
        #[derive(Serialize)]
        struct Line<'a> {
            text: &'a str,
        }
        // A rehearsal `text` line arrives whole, as a prompt with an empty response.
        if response.is_empty() && example.system.is_none() {
            write_json(
                &Line {
                    text: example.prompt,
                },
                out,
            );
        } else {
            write_json(
                &Line {
                    text: &render_text(example.system, example.prompt, response),
                },
                out,
            );
        }
        Ok(())
    }
}

/// `sharegpt`: `{"conversations":[{"from":"human",..},{"from":"gpt",..}],"system":..?}`.
#[derive(Debug, Clone, Copy)]
struct ShareGpt;

impl Formatter for ShareGpt {
    fn format(&self) -> Format {
        Format::ShareGpt
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let response = response_of(example).ok_or_else(|| unsupported(self.format(), example))?;
        #[derive(Serialize)]
        struct Turn<'a> {
            from: &'a str,
            value: &'a str,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            conversations: [Turn<'a>; 2],
            #[serde(skip_serializing_if = "Option::is_none")]
            system: Option<&'a str>,
        }
        write_json(
            &Line {
                conversations: [
                    Turn {
                        from: "human",
                        value: example.prompt,
                    },
                    Turn {
                        from: "gpt",
                        value: response,
                    },
                ],
                system: example.system,
            },
            out,
        );
        Ok(())
    }
}

/// `dpo`: `{"prompt":..,"chosen":..,"rejected":..}` (conversational lists with a system prompt).
#[derive(Debug, Clone, Copy)]
struct Dpo;

impl Formatter for Dpo {
    fn format(&self) -> Format {
        Format::Dpo
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let Body::Preference { chosen, rejected } = example.body else {
            return Err(unsupported(self.format(), example));
        };
        #[derive(Serialize)]
        struct Line<'a> {
            prompt: Prompt<'a>,
            chosen: Reply<'a>,
            rejected: Reply<'a>,
        }
        let conversational = example.system.is_some();
        write_json(
            &Line {
                prompt: Prompt {
                    system: example.system,
                    user: example.prompt,
                },
                chosen: Reply {
                    conversational,
                    content: chosen,
                },
                rejected: Reply {
                    conversational,
                    content: rejected,
                },
            },
            out,
        );
        Ok(())
    }
}

/// `kto`: `{"prompt":..,"completion":..,"label":bool}` (conversational lists with a system prompt).
#[derive(Debug, Clone, Copy)]
struct Kto;

impl Formatter for Kto {
    fn format(&self) -> Format {
        Format::Kto
    }

    fn write_line(&self, example: &Example<'_>, out: &mut Vec<u8>) -> Result<(), DatagenError> {
        let Body::Labeled { completion, label } = example.body else {
            return Err(unsupported(self.format(), example));
        };
        #[derive(Serialize)]
        struct Line<'a> {
            prompt: Prompt<'a>,
            completion: Reply<'a>,
            label: bool,
        }
        let conversational = example.system.is_some();
        write_json(
            &Line {
                prompt: Prompt {
                    system: example.system,
                    user: example.prompt,
                },
                completion: Reply {
                    conversational,
                    content: completion,
                },
                label,
            },
            out,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: Format, example: &Example<'_>) -> String {
        let mut out = Vec::new();
        formatter(format).write_line(example, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        text
    }

    fn sft<'a>(prompt: &'a str, response: &'a str) -> Example<'a> {
        Example {
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
        check(Format::Completion, &e, r#"{"prompt":"q","completion":"r"}"#);
        check(Format::Text, &e, r#"{"text":"q\n\nr"}"#);
        check(
            Format::ShareGpt,
            &e,
            r#"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"r"}]}"#,
        );
        let pair = Example {
            body: Body::Preference {
                chosen: "good",
                rejected: "bad",
            },
            ..e
        };
        check(
            Format::Dpo,
            &pair,
            r#"{"prompt":"q","chosen":"good","rejected":"bad"}"#,
        );
        let labeled = Example {
            body: Body::Labeled {
                completion: "bad",
                label: false,
            },
            ..e
        };
        check(
            Format::Kto,
            &labeled,
            r#"{"prompt":"q","completion":"bad","label":false}"#,
        );
    }

    #[test]
    fn system_prompt_in_each_format() {
        let e = Example {
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
            r#"{"prompt":[{"role":"system","content":"be brief"},{"role":"user","content":"q"}],"completion":[{"role":"assistant","content":"r"}]}"#,
        );
        check(Format::Text, &e, r#"{"text":"be brief\n\nq\n\nr"}"#);
        check(
            Format::ShareGpt,
            &e,
            r#"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"r"}],"system":"be brief"}"#,
        );
        let pair = Example {
            body: Body::Preference {
                chosen: "c",
                rejected: "x",
            },
            ..e
        };
        check(
            Format::Dpo,
            &pair,
            r#"{"prompt":[{"role":"system","content":"be brief"},{"role":"user","content":"q"}],"chosen":[{"role":"assistant","content":"c"}],"rejected":[{"role":"assistant","content":"x"}]}"#,
        );
    }

    #[test]
    fn metadata_of_a_record() {
        let t = DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap();
        let e = Example {
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
                Format::Completion => &value["prompt"],
                Format::ShareGpt => &value["conversations"][0]["value"],
                _ => {
                    assert_eq!(value["text"], format!("{nasty}\n\n{nasty}"));
                    continue;
                }
            };
            assert_eq!(prompt, nasty, "{format}");
        }
    }

    #[test]
    fn mismatched_bodies_are_refused() {
        let e = sft("q", "r");
        let mut out = Vec::new();
        assert!(matches!(
            formatter(Format::Dpo).write_line(&e, &mut out),
            Err(DatagenError::UnsupportedExample {
                format: "dpo",
                kind: "sft"
            })
        ));
        assert!(formatter(Format::Kto).write_line(&e, &mut out).is_err());
        let negative = Example {
            body: Body::Labeled {
                completion: "r",
                label: false,
            },
            ..e
        };
        assert!(formatter(Format::ChatMl)
            .write_line(&negative, &mut out)
            .is_err());
        assert!(out.is_empty());
        for f in Format::ALL {
            assert_eq!(formatter(f).format(), f);
        }
    }
}
