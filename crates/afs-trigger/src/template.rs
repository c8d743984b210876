//! Command templates: the trainer and evaluation commands with their `{placeholders}`.
//!
//! Values are never pasted into the shell text. Each value is passed to the command in an
//! environment variable (see [`Placeholder::env_var`]) and each placeholder is replaced by a
//! reference to that variable, written for the quoting context the placeholder is in:
//!
//! * outside quotes (also inside `$(...)`): `"$AFS_DATA_PATH"`;
//! * inside double quotes: `${AFS_DATA_PATH}`;
//! * inside single quotes or `$'...'`, where the shell expands nothing, inside backquotes
//!   or inside `${...}`: the template is refused with a message saying what to write.
//!
//! Whatever a value holds (quotes, `$(...)`, backquotes, newlines), the shell only ever
//! expands a variable, so a value cannot run commands. A backslash right before a
//! placeholder keeps it literal (`\{data}` is the text `{data}`), and placeholders in a
//! comment are left alone.

use std::fmt;

/// A value a command can be given, as `{name}` in its template and in an environment
/// variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{data}`: the training data file (`AFS_DATA_PATH`).
    Data,
    /// `{output_dir}`: the directory the trainer writes its model in (`AFS_OUTPUT_DIR`).
    OutputDir,
    /// `{run_id}`: the retrain run's id (`AFS_RUN_ID`).
    RunId,
    /// `{run_dir}`: the run directory (`AFS_RUN_DIR`).
    RunDir,
    /// `{result}`: the file the trainer writes its JSON result to (`AFS_RESULT_PATH`).
    Result,
    /// `{model_path}`: the model the trainer reported, for the evaluation command
    /// (`AFS_MODEL_PATH`).
    ModelPath,
}

impl Placeholder {
    /// Every placeholder.
    pub const ALL: [Placeholder; 6] = [
        Placeholder::Data,
        Placeholder::OutputDir,
        Placeholder::RunId,
        Placeholder::RunDir,
        Placeholder::Result,
        Placeholder::ModelPath,
    ];

    /// The placeholders of the trainer command.
    pub const TRAINER: &'static [Placeholder] = &[
        Placeholder::Data,
        Placeholder::OutputDir,
        Placeholder::RunId,
        Placeholder::RunDir,
        Placeholder::Result,
    ];

    /// The placeholders of the evaluation (gate) command.
    pub const EVAL: &'static [Placeholder] = &[
        Placeholder::ModelPath,
        Placeholder::RunId,
        Placeholder::RunDir,
        Placeholder::Data,
    ];

    /// The name between the braces: `data`, `output_dir`, ...
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Data => "data",
            Placeholder::OutputDir => "output_dir",
            Placeholder::RunId => "run_id",
            Placeholder::RunDir => "run_dir",
            Placeholder::Result => "result",
            Placeholder::ModelPath => "model_path",
        }
    }

    /// The environment variable that holds the value.
    pub fn env_var(self) -> &'static str {
        match self {
            Placeholder::Data => "AFS_DATA_PATH",
            Placeholder::OutputDir => "AFS_OUTPUT_DIR",
            Placeholder::RunId => "AFS_RUN_ID",
            Placeholder::RunDir => "AFS_RUN_DIR",
            Placeholder::Result => "AFS_RESULT_PATH",
            Placeholder::ModelPath => "AFS_MODEL_PATH",
        }
    }

    /// The placeholder written at the start of `text` (`{data}...`), if any.
    fn at_start(text: &[u8]) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| {
            let name = p.name().as_bytes();
            text.len() >= name.len() + 2
                && text[0] == b'{'
                && &text[1..=name.len()] == name
                && text[name.len() + 1] == b'}'
        })
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.name())
    }
}

/// Why a command template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(String);

/// A command template checked for one kind of command, ready to run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    text: String,
    script: String,
    used: Vec<Placeholder>,
}

/// Where the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Outside quotes, at the top level.
    Top,
    /// Inside `"..."`.
    Double,
    /// Inside `$(...)` with this many open parentheses (outside quotes within it).
    Subst(u32),
    /// Inside `` `...` ``.
    Backquote,
    /// Inside `${...}` with this many open braces.
    Param(u32),
}

impl CommandTemplate {
    /// Checks `text` as the template of a command that is given the values of `allowed`;
    /// `what` names the command in messages ("trainer command").
    pub fn parse(text: &str, allowed: &[Placeholder], what: &str) -> Result<Self, TemplateError> {
        let mut scanner = Scanner::new(text.as_bytes(), allowed, what);
        while scanner.i < scanner.bytes.len() {
            scanner.step()?;
        }
        if scanner.stack.len() > 1 && !scanner.used.is_empty() {
            return Err(TemplateError(
                "unterminated quote or substitution: the shell could not run it".into(),
            ));
        }
        // Only ASCII was inserted and whole UTF-8 sequences were copied.
        let script = String::from_utf8(scanner.out)
            .map_err(|_| TemplateError("the command is not valid UTF-8".into()))?;
        Ok(CommandTemplate {
            text: text.to_string(),
            script,
            used: scanner.used,
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The shell text to run: the template with each placeholder replaced by a reference
    /// to its environment variable.
    pub fn script(&self) -> &str {
        &self.script
    }

    /// The placeholders the template uses.
    pub fn placeholders(&self) -> &[Placeholder] {
        &self.used
    }
}

fn unterminated(rest: &[u8], what: &str) -> TemplateError {
    let has_placeholder = (0..rest.len()).any(|j| Placeholder::at_start(&rest[j..]).is_some());
    if has_placeholder {
        TemplateError(format!(
            "{what} is not closed (and a placeholder follows it): the shell could not run it"
        ))
    } else {
        TemplateError(format!("{what} is not closed: the shell could not run it"))
    }
}

/// The scan of a template by [`CommandTemplate::parse`]: the script written so far, the
/// quoting contexts open at `i`, and the placeholders met.
struct Scanner<'t> {
    bytes: &'t [u8],
    allowed: &'t [Placeholder],
    /// Names the command in messages.
    what: &'t str,
    out: Vec<u8>,
    stack: Vec<Context>,
    used: Vec<Placeholder>,
    /// The next byte to read.
    i: usize,
}

impl<'t> Scanner<'t> {
    fn new(bytes: &'t [u8], allowed: &'t [Placeholder], what: &'t str) -> Self {
        Scanner {
            bytes,
            allowed,
            what,
            out: Vec::with_capacity(bytes.len() + 32),
            stack: vec![Context::Top],
            used: Vec::new(),
            i: 0,
        }
    }

    /// Reads what starts at `i`: a placeholder, an escaped character, a quote, a
    /// substitution, a comment or one plain byte.
    fn step(&mut self) -> Result<(), TemplateError> {
        let bytes = self.bytes;
        let i = self.i;
        let context = *self.stack.last().unwrap_or(&Context::Top);
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        if c == b'{' {
            if let Some(p) = Placeholder::at_start(&bytes[i..]) {
                return self.placeholder(p, context);
            }
        }
        // A backslash takes the next character literally (in double quotes it only
        // escapes a few, but copying both unchanged is right either way).
        if c == b'\\' {
            self.copy_to((i + 2).min(bytes.len()));
            return Ok(());
        }
        if context == Context::Double {
            self.double_quoted(c, next);
            return Ok(());
        }
        self.unquoted(c, next, context)
    }

    /// Writes the reference to `p`'s variable for `context`, or refuses `p` there (or for
    /// this command).
    fn placeholder(&mut self, p: Placeholder, context: Context) -> Result<(), TemplateError> {
        if !self.allowed.contains(&p) {
            let names: Vec<String> = self.allowed.iter().map(|p| p.to_string()).collect();
            return Err(TemplateError(format!(
                "placeholder {p} is not available to the {} (it is given {})",
                self.what,
                names.join(", ")
            )));
        }
        let var = p.env_var();
        match context {
            Context::Top | Context::Subst(_) => {
                self.out.extend_from_slice(format!("\"${var}\"").as_bytes())
            }
            Context::Double => self.out.extend_from_slice(format!("${{{var}}}").as_bytes()),
            Context::Backquote => return Err(refuse(p, "backquotes (`...`); use $(...) instead")),
            Context::Param(_) => {
                return Err(refuse(
                    p,
                    &format!("${{...}}; use the variable {var} there instead"),
                ))
            }
        }
        if !self.used.contains(&p) {
            self.used.push(p);
        }
        self.i += p.name().len() + 2;
        Ok(())
    }

    /// Byte `c` (followed by `next`) inside double quotes.
    fn double_quoted(&mut self, c: u8, next: Option<u8>) {
        match (c, next) {
            (b'"', _) => {
                self.stack.pop();
            }
            (b'$', Some(b'(')) => return self.open(Context::Subst(1), b"$("),
            (b'$', Some(b'{')) => return self.open(Context::Param(1), b"${"),
            (b'`', _) => self.stack.push(Context::Backquote),
            _ => {}
        }
        self.push(c);
    }

    /// Byte `c` (followed by `next`) outside double quotes, in `context`.
    fn unquoted(&mut self, c: u8, next: Option<u8>, context: Context) -> Result<(), TemplateError> {
        let i = self.i;
        match (c, next) {
            (b'\'', _) => return self.single_quoted(),
            (b'$', Some(b'\'')) => return self.dollar_quoted(),
            (b'"', _) => self.stack.push(Context::Double),
            (b'$', Some(b'(')) => {
                self.open(Context::Subst(1), b"$(");
                return Ok(());
            }
            (b'$', Some(b'{')) => {
                self.open(Context::Param(1), b"${");
                return Ok(());
            }
            (b'`', _) => {
                if context == Context::Backquote {
                    self.stack.pop();
                } else {
                    self.stack.push(Context::Backquote);
                }
            }
            (b'(' | b')' | b'{' | b'}', _) => self.nest(c),
            (b'#', _)
                if matches!(context, Context::Top | Context::Subst(_))
                    && (i == 0 || b" \t\n;&|()<>".contains(&self.bytes[i - 1])) =>
            {
                // A comment, to the end of the line.
                let len = self.bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(self.bytes.len() - i);
                self.copy_to(i + len);
                return Ok(());
            }
            _ => {}
        }
        self.push(c);
        Ok(())
    }

    /// `'...'` at `i`, copied whole; refused if it holds a placeholder.
    fn single_quoted(&mut self) -> Result<(), TemplateError> {
        let bytes = self.bytes;
        let i = self.i;
        let Some(len) = bytes[i + 1..].iter().position(|&b| b == b'\'') else {
            return Err(unterminated(&bytes[i + 1..], "a single quote"));
        };
        if let Some(p) = placeholder_in(&bytes[i + 1..i + 1 + len]) {
            return Err(refuse(
                p,
                "single quotes, where the shell would not expand it; remove the \
                 quotes: afs quotes values itself",
            ));
        }
        self.copy_to(i + len + 2);
        Ok(())
    }

    /// `$'...'` at `i` (backslash escapes, ends at an unescaped quote), copied whole;
    /// refused if it holds a placeholder.
    fn dollar_quoted(&mut self) -> Result<(), TemplateError> {
        let bytes = self.bytes;
        let i = self.i;
        let mut j = i + 2;
        while j < bytes.len() && bytes[j] != b'\'' {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        if j >= bytes.len() {
            return Err(unterminated(&bytes[i + 2..], "a $'...' string"));
        }
        if let Some(p) = placeholder_in(&bytes[i + 2..j]) {
            return Err(refuse(
                p,
                "$'...', where the shell would not expand it; remove the quotes: \
                 afs quotes values itself",
            ));
        }
        self.copy_to(j + 1);
        Ok(())
    }

    /// Counts an opening or closing parenthesis in `$(...)`, or brace in `${...}`; the
    /// one that closes it leaves it.
    fn nest(&mut self, c: u8) {
        match (self.stack.last_mut(), c) {
            (Some(Context::Subst(depth)), b'(') | (Some(Context::Param(depth)), b'{') => {
                *depth += 1;
            }
            (Some(Context::Subst(depth)), b')') | (Some(Context::Param(depth)), b'}') => {
                *depth -= 1;
                if *depth == 0 {
                    self.stack.pop();
                }
            }
            _ => {}
        }
    }

    /// Enters `context` at the two bytes `opening` (`$(` or `${`), copying them.
    fn open(&mut self, context: Context, opening: &[u8; 2]) {
        self.stack.push(context);
        self.out.extend_from_slice(opening);
        self.i += 2;
    }

    /// Copies the bytes from `i` to `end` unchanged.
    fn copy_to(&mut self, end: usize) {
        self.out.extend_from_slice(&self.bytes[self.i..end]);
        self.i = end;
    }

    /// Copies byte `c` at `i`.
    fn push(&mut self, c: u8) {
        self.out.push(c);
        self.i += 1;
    }
}

/// The refusal of placeholder `p` inside `why`.
fn refuse(p: Placeholder, why: &str) -> TemplateError {
    TemplateError(format!("placeholder {p} is inside {why}"))
}

/// The first placeholder written in `segment`, if any.
fn placeholder_in(segment: &[u8]) -> Option<Placeholder> {
    (0..segment.len()).find_map(|j| Placeholder::at_start(&segment[j..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(text: &str) -> String {
        CommandTemplate::parse(text, Placeholder::TRAINER, "trainer command")
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .script
    }

    fn refusal(text: &str) -> String {
        CommandTemplate::parse(text, Placeholder::TRAINER, "trainer command")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn placeholders_become_variable_references_quoted_for_their_context() {
        assert_eq!(script("train {data}"), r#"train "$AFS_DATA_PATH""#);
        assert_eq!(script(r#"x "{data}""#), r#"x "${AFS_DATA_PATH}""#);
        assert_eq!(
            script(r#"x --out="{output_dir}/m" --n={run_id}"#),
            r#"x --out="${AFS_OUTPUT_DIR}/m" --n="$AFS_RUN_ID""#
        );
        assert_eq!(
            script(r#"x "$(cat "{result}")" $(ls {run_dir})"#),
            r#"x "$(cat "${AFS_RESULT_PATH}")" $(ls "$AFS_RUN_DIR")"#
        );
        assert_eq!(
            script(r#"x "$( (echo) ) {data}""#),
            r#"x "$( (echo) ) ${AFS_DATA_PATH}""#
        );
        // Escaped, commented, or not a placeholder: unchanged.
        assert_eq!(script(r"echo \{data}"), r"echo \{data}");
        assert_eq!(script(r#"echo "\\{data}""#), r#"echo "\\${AFS_DATA_PATH}""#);
        assert_eq!(script("x # uses {data}"), "x # uses {data}");
        assert_eq!(script("awk '{print $1}' f"), "awk '{print $1}' f");
        assert_eq!(script("echo ${data} {datum}"), "echo ${data} {datum}");
    }

    #[test]
    fn placeholders_where_the_shell_would_not_expand_them_are_refused() {
        assert_eq!(
            refusal("x '{data}'"),
            "placeholder {data} is inside single quotes, where the shell would not expand it; \
             remove the quotes: afs quotes values itself"
        );
        assert!(refusal("x $'a {data}'").contains("inside $'...'"));
        assert!(refusal(r"x $'a\'{data}'").contains("inside $'...'"));
        assert!(refusal("x `cat {data}`").contains("use $(...)"));
        assert!(refusal("x ${V:-{data}}").contains("AFS_DATA_PATH"));
        assert!(refusal(r#"x "{data}"#).contains("unterminated"));
        assert!(refusal("x '{data}").contains("not closed"));
        assert_eq!(
            refusal("x {model_path}"),
            "placeholder {model_path} is not available to the trainer command (it is given \
             {data}, {output_dir}, {run_id}, {run_dir}, {result})"
        );
        assert!(CommandTemplate::parse("x {model_path}", Placeholder::EVAL, "eval").is_ok());
    }

    #[test]
    fn the_rendered_script_never_contains_a_value() {
        let t = CommandTemplate::parse("a {data} \"{run_id}\"", Placeholder::TRAINER, "t").unwrap();
        assert_eq!(t.placeholders(), &[Placeholder::Data, Placeholder::RunId]);
        assert_eq!(t.text(), "a {data} \"{run_id}\"");
    }
}
