//! TOML → [`LoginScript`], keeping every key's line so errors can name it.
//!
//! Works on toml's spanned document tree (`DeTable`) rather than serde
//! derive: serde would report one error without telling apart "two actions",
//! "missing value" and "unknown action", and would not give the line of the
//! second action key.

use std::borrow::Cow;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::template::{Piece, Template, TemplateError, Var};
use super::{
    Action, Glob, LoginScript, ScriptError, ScriptErrorKind as K, Step, ACTIONS, DEFAULT_TIMEOUT_MS,
};

/// Keys that may accompany an action key in a step.
const MODIFIERS: [&str; 5] = ["value", "key", "name", "optional", "timeout_ms"];

pub(super) fn parse(text: &str) -> Result<LoginScript, ScriptError> {
    let lines = LineIndex::new(text);
    let doc = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| lines.line(s.start));
        ScriptError::new(line, K::Syntax(e.message().to_string()))
    })?;
    let mut provider = None;
    let mut timeout_ms = DEFAULT_TIMEOUT_MS;
    let mut steps = None;
    for entry in entries(doc.get_ref(), &lines) {
        match entry.key {
            "provider" => provider = Some(non_empty_string(&entry)?.to_string()),
            "timeout_ms" => timeout_ms = positive_int(&entry)?,
            "step" => steps = Some(parse_steps(&entry, &lines)?),
            other => return Err(entry.error(K::UnknownTopLevelKey(other.to_string()))),
        }
    }
    let provider = provider.ok_or(ScriptError::new(1, K::MissingProvider))?;
    let steps = steps
        .filter(|s| !s.is_empty())
        .ok_or(ScriptError::new(lines.last_line(), K::NoSteps))?;
    Ok(LoginScript {
        provider,
        timeout_ms,
        steps,
    })
}

fn parse_steps(entry: &Entry<'_>, lines: &LineIndex) -> Result<Vec<Step>, ScriptError> {
    let array = entry
        .value
        .as_array()
        .ok_or_else(|| entry.wrong_type("an array of tables ([[step]])"))?;
    array
        .iter()
        .map(|item| {
            let line = lines.line(item.span().start);
            let table = item.get_ref().as_table().ok_or(ScriptError::new(
                line,
                K::WrongType {
                    key: "step".into(),
                    expected: "a table ([[step]])",
                },
            ))?;
            parse_step(line, table, lines)
        })
        .collect()
}

fn parse_step(line: usize, table: &DeTable<'_>, lines: &LineIndex) -> Result<Step, ScriptError> {
    let mut action_entry: Option<Entry<'_>> = None;
    let mut modifiers = Vec::new();
    for entry in entries(table, lines) {
        if ACTIONS.contains(&entry.key) {
            if let Some(first) = &action_entry {
                return Err(entry.error(K::TwoActions {
                    first: first.key.to_string(),
                    second: entry.key.to_string(),
                }));
            }
            action_entry = Some(entry);
        } else if MODIFIERS.contains(&entry.key) {
            modifiers.push(entry);
        } else {
            return Err(entry.error(K::UnknownAction(entry.key.to_string())));
        }
    }
    let action_entry = action_entry.ok_or(ScriptError::new(line, K::NoAction))?;
    let mut fields = Fields {
        action: &action_entry,
        modifiers,
        line,
    };
    let action = build_action(&action_entry, &mut fields)?;
    let optional = fields
        .take("optional")
        .map(|e| bool_value(&e))
        .transpose()?;
    let timeout_ms = fields
        .take("timeout_ms")
        .map(|e| positive_int(&e))
        .transpose()?;
    fields.reject_leftovers()?;
    Ok(Step {
        action,
        optional: optional.unwrap_or(false),
        timeout_ms,
        line,
    })
}

fn build_action(entry: &Entry<'_>, fields: &mut Fields<'_, '_>) -> Result<Action, ScriptError> {
    Ok(match entry.key {
        "goto" => Action::Goto {
            url: url_template(entry)?,
        },
        "fill" => Action::Fill {
            selector: plain_string(entry)?,
            value: template(&fields.require("fill", "value")?)?,
        },
        "click" => Action::Click {
            selector: plain_string(entry)?,
        },
        "press" => Action::Press {
            selector: plain_string(entry)?,
            key: plain_string(&fields.require("press", "key")?)?,
        },
        "wait_for" => Action::WaitFor {
            selector: plain_string(entry)?,
        },
        "wait_for_url" => {
            let source = plain_string(entry)?;
            Action::WaitForUrl {
                glob: Glob::parse(&source).map_err(|e| entry.error(K::BadGlob(e)))?,
            }
        }
        "screenshot" => {
            if !bool_value(entry)? {
                return Err(entry.wrong_type("`true` (name the file with `name`)"));
            }
            let name_entry = fields.require("screenshot", "name")?;
            let name = plain_string(&name_entry)?;
            if !is_valid_file_stem(&name) {
                return Err(name_entry.error(K::BadScreenshotName));
            }
            Action::Screenshot { name }
        }
        other => unreachable!("{other} is in ACTIONS"),
    })
}

/// The modifier keys of one step, consumed by the action that uses them so
/// any left over are reported as not belonging to it.
struct Fields<'a, 'i> {
    action: &'a Entry<'i>,
    modifiers: Vec<Entry<'i>>,
    line: usize,
}

impl<'i> Fields<'_, 'i> {
    fn take(&mut self, key: &str) -> Option<Entry<'i>> {
        let pos = self.modifiers.iter().position(|e| e.key == key)?;
        Some(self.modifiers.remove(pos))
    }

    fn require(
        &mut self,
        action: &'static str,
        field: &'static str,
    ) -> Result<Entry<'i>, ScriptError> {
        self.take(field).ok_or(ScriptError::new(
            self.action.line.max(self.line),
            K::MissingField { action, field },
        ))
    }

    fn reject_leftovers(&self) -> Result<(), ScriptError> {
        match self.modifiers.first() {
            Some(extra) => Err(extra.error(K::FieldNotAllowed {
                field: extra.key.to_string(),
                action: self.action.key.to_string(),
            })),
            None => Ok(()),
        }
    }
}

/// One `key = value` with the line of its key.
struct Entry<'a> {
    key: &'a str,
    line: usize,
    value: &'a DeValue<'a>,
}

impl Entry<'_> {
    fn error(&self, kind: K) -> ScriptError {
        ScriptError::new(self.line, kind)
    }

    fn wrong_type(&self, expected: &'static str) -> ScriptError {
        self.error(K::WrongType {
            key: self.key.to_string(),
            expected,
        })
    }
}

/// A table's entries in file order (toml's map is sorted by key).
fn entries<'a>(table: &'a DeTable<'a>, lines: &LineIndex) -> Vec<Entry<'a>> {
    let mut entries: Vec<(Range<usize>, Entry<'a>)> = table
        .iter()
        .map(
            |(key, value): (&'a Spanned<Cow<'a, str>>, &'a Spanned<DeValue<'a>>)| {
                let span = key.span();
                let entry = Entry {
                    key: key.get_ref().as_ref(),
                    line: lines.line(span.start),
                    value: value.get_ref(),
                };
                (span, entry)
            },
        )
        .collect();
    entries.sort_by_key(|(span, _)| span.start);
    entries.into_iter().map(|(_, e)| e).collect()
}

fn string<'a>(entry: &Entry<'a>) -> Result<&'a str, ScriptError> {
    entry
        .value
        .as_str()
        .ok_or_else(|| entry.wrong_type("a string"))
}

fn non_empty_string<'a>(entry: &Entry<'a>) -> Result<&'a str, ScriptError> {
    match string(entry)? {
        "" => Err(entry.error(K::Empty(entry.key.to_string()))),
        s => Ok(s),
    }
}

/// A selector, key name, glob or file name: text that shows up in logs and
/// errors, so no variables (a secret there would leak).
fn plain_string(entry: &Entry<'_>) -> Result<String, ScriptError> {
    let s = non_empty_string(entry)?;
    if s.contains("${") {
        return Err(entry.error(K::VariableNotAllowed(entry.key.to_string())));
    }
    Ok(s.to_string())
}

fn template(entry: &Entry<'_>) -> Result<Template, ScriptError> {
    Template::parse(string(entry)?).map_err(|e| {
        entry.error(match e {
            TemplateError::UnknownVariable(name) => K::UnknownVariable(name),
            TemplateError::BadSecretName(name) => K::BadSecretName(name),
            TemplateError::Unterminated => K::UnterminatedVariable,
        })
    })
}

/// `goto` takes `${authorize_url}` but no secret: page URLs are logged.
fn url_template(entry: &Entry<'_>) -> Result<Template, ScriptError> {
    non_empty_string(entry)?;
    let url = template(entry)?;
    if let Some(var) = url.vars().find(|v| v.is_confidential()) {
        return Err(entry.error(K::ConfidentialInUrl(var.to_string())));
    }
    if !is_web_target(&url) {
        return Err(entry.error(K::NotAWebUrl(url.to_source())));
    }
    Ok(url)
}

/// A `goto` leads to the farm's authorize URL, a device login's
/// verification page or to an http(s) page: a
/// `file:`, `data:`, `chrome:` or `javascript:` page would show the host's
/// files or the browser's internals in a failure screenshot. The runner
/// checks the rendered URL again (the authorize URL comes from the config).
fn is_web_target(url: &Template) -> bool {
    match url.pieces().first() {
        Some(Piece::Var(
            Var::AuthorizeUrl | Var::VerificationUri | Var::VerificationUriComplete,
        )) => true,
        Some(Piece::Text(text)) => {
            let Some((scheme, rest)) = text.split_once("://") else {
                return false;
            };
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") && !host.is_empty()
        }
        _ => false,
    }
}

fn bool_value(entry: &Entry<'_>) -> Result<bool, ScriptError> {
    entry
        .value
        .as_bool()
        .ok_or_else(|| entry.wrong_type("true or false"))
}

fn positive_int(entry: &Entry<'_>) -> Result<u64, ScriptError> {
    let expected = "a positive integer (milliseconds)";
    let int = entry
        .value
        .as_integer()
        .ok_or_else(|| entry.wrong_type(expected))?;
    let digits = int.as_str().replace('_', "");
    let digits = digits.trim_start_matches('+');
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0o"))
        .or_else(|| digits.strip_prefix("0b"))
        .unwrap_or(digits);
    match u64::from_str_radix(digits, int.radix()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(entry.wrong_type(expected)),
    }
}

/// Screenshot names become file names under the artifacts dir.
fn is_valid_file_stem(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Byte offset → 1-based line.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }

    fn last_line(&self) -> usize {
        self.starts.len()
    }
}
